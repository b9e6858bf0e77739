"""Tiny runs of the recipe, one seed, in one process: a and b full, c with a's tower, d from a stages-1-2 checkpoint;
prints per run how many tensors differ from a's and the first three max differences.

    PYTHONPATH=. python experiments/speed/float32_repro.py float32 [DIR]   # -> float32-repro.log ("float32" lines)
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tokenpacker.synthetic.train import train

dtype, out = sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/repro")
tiny = dict(steps=2, vision_steps=2, shape_steps=1, projector_steps=2, projector_color_steps=1, warmup_steps=1,
            batch_size=2, max_turns=2, log_every=1, mllm_dtype=dtype)  # the tests' tiny recipe
polish = dict(polish_steps=2, polish_min_turns=2, polish_max_turns=3)
for name in ("a", "b"):
    train(out / name, **tiny, **polish)
train(out / "c", **tiny, **polish, tower_from=out / "a")
train(out / "stage2", **tiny, polish_steps=0)
train(out / "d", **tiny, **polish, resume_from=out / "stage2")
first = load_file(out / "a" / "model.safetensors")
for name in "bcd":
    other = load_file(out / name / "model.safetensors")
    differing = [(k, (first[k].float() - other[k].float()).abs().max().item())
                 for k in first if not torch.equal(first[k], other[k])]  # fmt: skip
    print(dtype, name, len(differing), differing[:3])
