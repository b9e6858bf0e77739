"""Screen: does a wider tower (so a wider projector value path) keep the count mark in the point tokens?
Stages 1 and 1b of the recipe (`train(steps=0, polish_steps=0)`) with the tower's hidden size WIDTH instead of 64
(intermediate 3x, the projector at the same width, as TokenPacker's is at the tower's), then `where_lost.py` on it.

    PYTHONPATH=. python experiments/token-marks/wide_tower_screen.py OUT_DIR [WIDTH]"""

import sys
from pathlib import Path

import tokenpacker.synthetic.train as recipe

out, width = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 96
narrow = recipe.default_config


def wide_config(tokenizer):
    config = narrow(tokenizer)
    vision = config.vision_config
    vision.hidden_size, vision.intermediate_size, vision.projection_dim = width, 3 * width, width
    return config


recipe.default_config = wide_config
recipe.train(out, steps=0, polish_steps=0)
