"""Where is the 3x3 cell readable? A linear probe (probe.py's) on a checkpoint's tower features (per patch) and
point tokens, fitted on the global/only view's patches of 70% of the scenes and scored on the rest, separately on
background, object and centre patches (tokens).

    PYTHONPATH=. python experiments/where-cell/cell_by_patch_kind.py CHECKPOINT [SCENES]   (with run-f.patch applied)"""

import random
import sys

import torch

from tokenpacker.loading import load
from tokenpacker.synthetic.probe import PROBE_SEED
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
        pixels, labels = make.views_and_labels(
            rng, WARMUP_SPLIT if scene % 2 else SPLITS["standard"]
        )
        features, multi_level = model.model.vision_tower(pixels)
        tokens = model.model.mm_projector(features, multi_level).tokens
        for name, x, y in (
            ("tower", multi_level, labels),
            ("point tokens", tokens, token_labels(labels, 2)),
        ):
            y = (
                y.flatten(2).transpose(1, 2).flatten(0, 1)
            )  # (N, 4): colour, shape, centre, cell
            keep = y[:, 3] >= 0
            rows[name][0].append(x.flatten(0, 1)[keep])
            rows[name][1].append(
                torch.cat(
                    [
                        y[keep],
                        torch.full((int(keep.sum()), 1), int(scene >= 0.7 * scenes)),
                    ],
                    1,
                )
            )
for name, (xs, ys) in rows.items():
    x, y = torch.cat(xs).float(), torch.cat(ys)
    held = y[:, 4] > 0
    fit = ~held
    x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-5)
    w = torch.zeros(x.shape[1], 9, requires_grad=True)
    b = torch.zeros(9, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(x[fit] @ w + b, y[fit, 3])
        opt.zero_grad()
        loss.backward()
        opt.step()
    right = ((x @ w + b).argmax(-1) == y[:, 3]) & held
    kinds = {"background": y[:, 0] == 0, "object": y[:, 0] > 0, "centre": y[:, 2] > 0}
    print(
        name
        + ": "
        + "  ".join(
            f"{k} {right[m & held].float().mean():.3f} (n={int((m & held).sum())})"
            for k, m in kinds.items()
        )
    )
