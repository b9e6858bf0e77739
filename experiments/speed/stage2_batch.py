"""The set-up the stage-2 step timings share: a checkpoint in training mode (tower frozen, the training attention)
and one batch of 8 scenes, 3 in 4 from the standard split as in stage 2's full range, seed 0."""

import random
from pathlib import Path

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import SPLITS


def stage2_batch(checkpoint: str | Path) -> tuple:
    """-> (model, examples): the model ready for `T.batch_loss(model, None, examples)` and its backward."""
    pipeline = load(Path(checkpoint), device="cpu")
    model = pipeline.model.train().requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    make = T.ExampleMaker(pipeline.tokenizer, model.config, max_turns=8)
    rng = random.Random(0)
    examples = [make(rng, SPLITS["small"] if i % 4 == 0 else SPLITS["standard"]) for i in range(8)]
    print("views per scene", [e[0].pixel_values.shape[0] for e in examples])
    return model, examples
