"""Can the point tokens of the global view (or the only view) say which 3x3 cell of the image they show?

    PYTHONPATH=. python experiments/where-cell/cell_probe.py [LINEAR_STEPS] [JOINT_STEPS]

On the shipped default model's tower (frozen) and projector: first a linear cell probe on the frozen point tokens
(is the cell already linearly there?), then the projector trained with the stage-1b losses plus the cell target
(can it be put there without losing colour and shape?). Accuracy is on each batch before its update."""

import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import SPLITS, random_scene

torch.manual_seed(T.TRAIN_SEED + 1)
rng = random.Random(T.TRAIN_SEED + 1)
pipeline = load(None, device="cpu")
model, config = pipeline.model, pipeline.config
model.requires_grad_(False)
make = T.ExampleMaker(pipeline.tokenizer, config)
G = config.point_grid


def cell_targets(scene, views, grid: int = G) -> torch.Tensor:
    """(V, grid*grid) 3x3 cell 0..8 of the image under the centre of each of a view's grid x grid cells (point
    tokens: G; CLIP patches: 24), in the global view or the only view; -100 elsewhere and on padding."""
    out = torch.full((len(views), grid * grid), -100)
    for view in views:
        if len(views) > 1 and view.kind != "global":
            continue
        centre = (np.arange(grid) + 0.5) * view.size / grid
        xs, ys = view.to_image(centre, centre)
        col = np.where((xs >= 0) & (xs < scene.width), np.minimum(2, (3 * xs / scene.width).astype(int)), -1)
        row = np.where((ys >= 0) & (ys < scene.height), np.minimum(2, (3 * ys / scene.height).astype(int)), -1)
        cells = np.where((row[:, None] >= 0) & (col[None, :] >= 0), 3 * row[:, None] + col[None, :], -100)
        out[view.index] = torch.from_numpy(cells.reshape(-1))
    return out


def batch(size=6):
    pixels, labels, cells = [], [], []
    for _ in range(size):
        scene = random_scene(rng, **(T.WARMUP_SPLIT if rng.random() < 0.5 else SPLITS["standard"]))
        prepared = make.processor(scene.render())
        pixels.append(prepared.pixel_values)
        labels.append(T.patch_labels(scene, prepared.views, config.raw_grid))
        cells.append(cell_targets(scene, prepared.views))
    return torch.cat(pixels), torch.cat(labels), torch.cat(cells)


def run(steps, params, loss_fn, tag):
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    start, history = time.time(), []
    for step in range(steps):
        views, labels, cells = batch()
        with torch.no_grad():
            features, multi_level = model.model.vision_tower(views)
        tokens = model.model.mm_projector(features, multi_level).tokens  # (V, G*G, H)
        loss, cell_acc, color, shape = loss_fn(tokens, labels, cells)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 50)
        optimizer.step()
        history.append((loss.item(), cell_acc, color, shape))
        if (step + 1) % 25 == 0:
            l, c, co, sh = np.nanmean(history[-25:], axis=0)
            print(f"{tag} step {step + 1}/{steps}  loss {l:.3f}  global-view cell acc {c:.3f}  "
                  f"object colour {co:.3f}  shape {sh:.3f}  {time.time() - start:.0f}s", flush=True)


cell_head = torch.nn.Linear(config.text_config.hidden_size, 9)
token_head = T.TokenHead(config.text_config.hidden_size, config.scale_factor)


def cell_loss(tokens, cells):
    x, y = tokens.flatten(0, 1), cells.reshape(-1)
    keep = y >= 0
    logits = cell_head(x[keep]).float()
    return F.cross_entropy(logits, y[keep]), (logits.argmax(-1) == y[keep]).float().mean().item()


def linear_only(tokens, labels, cells):
    loss, acc = cell_loss(tokens.detach(), cells)
    return loss, acc, np.nan, np.nan


def joint(tokens, labels, cells):
    loss, acc = cell_loss(tokens, cells)
    color, shape = token_head.accuracy(tokens.detach(), labels)
    return loss + token_head.loss(tokens, labels), acc, color, shape


if __name__ == "__main__":
    linear_steps = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    joint_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    run(linear_steps, list(cell_head.parameters()), linear_only, "linear")
    # token_head starts fresh: fit it alone on the shipped tokens first, so colour/shape are measured, not relearned
    run(100, list(token_head.parameters()), lambda t, lab, c: (token_head.loss(t.detach(), lab), np.nan, *token_head.accuracy(t.detach(), lab)), "token-head")
    model.model.mm_projector.requires_grad_(True)
    run(joint_steps, list(model.model.mm_projector.parameters()) + list(cell_head.parameters()) + list(token_head.parameters()), joint, "joint")
