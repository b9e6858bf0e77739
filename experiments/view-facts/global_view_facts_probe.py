"""What the LLM could read about counts and cells: linear probes on the *global view* (the thumbnail, or the only
view) of a checkpoint, where run L's count and `where` questions look.

    PYTHONPATH=. python experiments/view-facts/global_view_facts_probe.py MODEL [SCENES]   (needs run-l.patch applied)

Targets (from `patch_labels`, run L's branch): the image's object count on every token of the global view; the
3x3 image cell of the object's centre on its object tokens. Probes are fitted on 70% of the scenes and scored on
the rest (`linear_probe_accuracy`); the tower's multi-level features are probed the same way per patch. Chance:
the majority class is printed beside each figure.
"""

import random
import sys

import torch
import torch.nn.functional as F

from tokenpacker.loading import load
from tokenpacker.synthetic.probe import PROBE_SEED, linear_probe_accuracy
from tokenpacker.synthetic.scenes import SPLITS
from tokenpacker.synthetic.train import CELL, COUNT, ExampleMaker


@torch.no_grad()
def main(model_dir: str, scenes: int = 120) -> None:
    pipeline = load(model_dir, device="cpu")
    model = pipeline.model
    make = ExampleMaker(pipeline.tokenizer, model.config)
    rng = random.Random(PROBE_SEED)
    rows = {"tower": ([], []), "point tokens": ([], [])}
    for scene in range(scenes):
        pixel_values, labels = make.views_and_labels(rng, SPLITS["standard"])
        pixel_values, labels = pixel_values[-1:], labels[-1:]  # the global view is the last view (or the only one)
        features, multi_level = model.model.vision_tower(pixel_values)
        tokens = model.model.mm_projector(features, multi_level).tokens
        pooled = F.max_pool2d(labels.float(), model.config.scale_factor).long()
        for name, values, dense in (("tower", multi_level, labels), ("point tokens", tokens, pooled)):
            flat = dense.flatten(2).transpose(1, 2).flatten(0, 1)  # (N, channels)
            held_out = torch.full((len(flat), 1), int(scene >= 0.7 * scenes))
            rows[name][0].append(values.flatten(0, 1).float())
            rows[name][1].append(torch.cat([flat[:, [COUNT, CELL]], held_out], 1))
    for name, (values, targets) in rows.items():
        x, y = torch.cat(values), torch.cat(targets)
        held_out = y[:, 2] > 0
        count = linear_probe_accuracy(x, y[:, 0], held_out, 6)
        objects = y[:, 1] > 0
        cell = linear_probe_accuracy(x[objects], y[objects, 1] - 1, held_out[objects], 9)
        majority = lambda t: (t == t.mode().values).float().mean().item()
        print(f"{name}: image count {count:.3f} (majority {majority(y[held_out, 0]):.3f})  "
              f"object cell {cell:.3f} (majority {majority(y[objects & held_out, 1]):.3f}, {int(objects.sum())} object rows)")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 120)
