"""Can the tower learn where its patches lie? The shipped tower trained on, with stage 1's losses (fresh PatchHead)
plus a linear 3x3-cell target on the global/only view's patches.

    PYTHONPATH=. python experiments/where-cell/tower_cell_train.py [STEPS]

Accuracy on each batch before its update: cell (chance 0.11), object colour, outline shape."""

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, "experiments/where-cell")
from cell_probe import T, cell_targets, config, make, model, rng  # noqa: E402  (the seeded set-up of cell_probe.py)

from tokenpacker.synthetic.scenes import SPLITS, random_scene  # noqa: E402

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
tower = model.model.vision_tower.train().requires_grad_(True)
width = config.vision_config.hidden_size * len(config.mm_vision_feature_layers)
head, cell_head = T.PatchHead(width), torch.nn.Linear(width, 9)
params = list(tower.parameters()) + list(head.parameters()) + list(cell_head.parameters())
optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
start, history = time.time(), []
for step in range(steps):
    pixels, labels, cells = [], [], []
    for _ in range(6):
        scene = random_scene(rng, **(T.WARMUP_SPLIT if rng.random() < 0.5 else SPLITS["standard"]))
        prepared = make.processor(scene.render())
        pixels.append(prepared.pixel_values)
        labels.append(T.patch_labels(scene, prepared.views, config.raw_grid))
        cells.append(cell_targets(scene, prepared.views, config.raw_grid))
    labels, y = torch.cat(labels), torch.cat(cells).reshape(-1)
    _, multi_level = tower(torch.cat(pixels))  # (V, R*R, L*C)
    keep = y >= 0
    logits = cell_head(multi_level.flatten(0, 1)[keep])
    loss = head.loss(multi_level, labels) + F.cross_entropy(logits, y[keep])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    for group in optimizer.param_groups:
        group["lr"] = 1e-3 * min(1.0, (step + 1) / 50)
    optimizer.step()
    history.append(((logits.argmax(-1) == y[keep]).float().mean().item(), *head.accuracy(multi_level.detach(), labels)))
    if (step + 1) % 25 == 0:
        cell, color, shape = np.mean(history[-25:], axis=0)
        print(f"step {step + 1}/{steps}  cell acc {cell:.3f}  object colour {color:.3f}  outline shape {shape:.3f}  "
              f"{time.time() - start:.0f}s", flush=True)
