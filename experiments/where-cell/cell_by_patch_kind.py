"""Where is the 3x3 cell readable? probe.py's linear probe on a checkpoint's tower features (per patch) and point
tokens, fitted on the global/only view's patches of 70% of the scenes and scored on the rest, separately on
background, object and centre patches (tokens).

    PYTHONPATH=. python experiments/where-cell/cell_by_patch_kind.py CHECKPOINT [SCENES]   (with run-f.patch applied)"""

import random
import sys

import torch

from tokenpacker.loading import load
from tokenpacker.synthetic.probe import PROBE_SEED, linear_probe_accuracy
from tokenpacker.synthetic.scenes import SPLITS
from tokenpacker.synthetic.train import WARMUP_SPLIT, ExampleMaker, token_labels

torch.manual_seed(0)
pipeline = load(sys.argv[1], device="cpu")
scenes = int(sys.argv[2]) if len(sys.argv) > 2 else 60
model = pipeline.model
make = ExampleMaker(pipeline.tokenizer, model.config)
rng = random.Random(PROBE_SEED)
rows = {"tower": ([], []), "point tokens": ([], [])}
with torch.no_grad():
    for scene in range(scenes):
        pixels, labels = make.views_and_labels(rng, WARMUP_SPLIT if scene % 2 else SPLITS["standard"])
        features, multi_level = model.model.vision_tower(pixels)
        tokens = model.model.mm_projector(features, multi_level).tokens
        for name, x, y in (("tower", multi_level, labels), ("point tokens", tokens, token_labels(labels, 2))):
            y = y.flatten(2).transpose(1, 2).flatten(0, 1)  # (N, 4): colour, shape, centre, cell
            keep = y[:, 3] >= 0
            rows[name][0].append(x.flatten(0, 1)[keep])
            held = torch.full((int(keep.sum()), 1), int(scene >= 0.7 * scenes))  # the last 30% of the scenes
            rows[name][1].append(torch.cat([y[keep], held], 1))
for name, (xs, ys) in rows.items():
    x, y = torch.cat(xs).float(), torch.cat(ys)
    held = y[:, 4] > 0
    kinds = {"background": y[:, 0] == 0, "object": y[:, 0] > 0, "centre": y[:, 2] > 0}
    scores = []
    for kind, mask in kinds.items():  # the same fit each time (the same rows, zero start), scored on one kind
        use = ~held | (held & mask)
        accuracy = linear_probe_accuracy(x[use], y[use, 3], held[use], 9)
        scores.append(f"{kind} {accuracy:.3f} (n={int((held & mask).sum())})")
    print(f"{name}: " + "  ".join(scores))
