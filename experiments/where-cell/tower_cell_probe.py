"""Linear 3x3-cell probe on the shipped tower's features of the global/only view (per CLIP patch): does the tower
keep absolute position?  PYTHONPATH=. python experiments/where-cell/tower_cell_probe.py"""

import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, "experiments/where-cell")
from cell_probe import T, cell_targets, config, make, model, rng  # noqa: E402  (the seeded set-up of cell_probe.py)

from tokenpacker.synthetic.scenes import SPLITS, random_scene  # noqa: E402

R = config.raw_grid


if __name__ == "__main__":
    for name, pick in (("tower multi-level", lambda last, multi: multi), ("tower last features", lambda last, multi: last)):
        head, optimizer, history = None, None, []
        for step in range(150):
            pixels, cells = [], []
            for _ in range(6):
                scene = random_scene(rng, **(T.WARMUP_SPLIT if rng.random() < 0.5 else SPLITS["standard"]))
                prepared = make.processor(scene.render())
                pixels.append(prepared.pixel_values)
                cells.append(cell_targets(scene, prepared.views, R))
            with torch.no_grad():
                x = pick(*model.model.vision_tower(torch.cat(pixels)))  # (V, R*R, C)
            if head is None:
                head = torch.nn.Linear(x.shape[-1], 9)
                optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
            y = torch.cat(cells).reshape(-1)
            keep = y >= 0
            logits = head(x.flatten(0, 1)[keep])
            history.append((logits.argmax(-1) == y[keep]).float().mean().item())
            optimizer.zero_grad()
            F.cross_entropy(logits, y[keep]).backward()
            optimizer.step()
        print(f"{name} {tuple(x.shape)}: cell accuracy over the last 25 steps {np.mean(history[-25:]):.3f}", flush=True)
