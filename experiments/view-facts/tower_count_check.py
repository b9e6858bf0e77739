"""Can the tower count the objects of a global view when that is all it is asked? (needs run-l.patch applied)

    PYTHONPATH=. python experiments/view-facts/tower_count_check.py MODEL STEPS

Starts from MODEL's tower, trains the tower and a fresh linear count read-out (`PatchHead.counts`, every
patch of every view; the view's object count and its count of each shape) on the standard split, and logs the
object-count accuracy on the global views' patches (the thumbnail, or the only view) of each batch before it
is trained on; at the end, the share of the most common count among all those views (what always guessing it
scores). Seeded (scenes: random.Random(7)).
"""

import random
import sys
import time

import numpy as np
import torch

from tokenpacker.loading import load
from tokenpacker.synthetic.scenes import SPLITS
from tokenpacker.synthetic.train import COUNT, MAX_COUNT, ExampleMaker, PatchHead, count_loss


def main(model_dir: str, steps: int, batch_size: int = 6, lr: float = 1e-3, log_every: int = 25) -> None:
    torch.manual_seed(7)
    pipeline = load(model_dir, device="cpu")
    model = pipeline.model.float().train()
    tower = model.model.vision_tower
    config = model.config
    head = PatchHead(config.vision_config.hidden_size * len(config.mm_vision_feature_layers))
    make = ExampleMaker(pipeline.tokenizer, config)
    rng = random.Random(7)
    params = list(tower.parameters()) + list(head.counts.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    history, seen, start = [], [], time.time()
    for step in range(steps):
        batch = [make.views_and_labels(rng, SPLITS["standard"]) for _ in range(batch_size)]
        views, labels = torch.cat([v for v, _ in batch]), torch.cat([lab for _, lab in batch])
        last = torch.tensor(np.cumsum([len(v) for v, _ in batch]) - 1)  # each image's global (or only) view
        _, multi_level = tower(views)
        logits = head.counts(multi_level)  # (V, R*R, 4 * 6)
        targets = labels[:, COUNT:].flatten(2).transpose(1, 2)  # (V, R*R, 4)
        loss = count_loss(logits.flatten(0, 1), targets.flatten(0, 1))
        with torch.no_grad():
            predicted = logits[last, :, : MAX_COUNT + 1].argmax(-1)  # (images, R*R)
            truth = targets[last, :, 0]
            right = (predicted == truth).float().mean().item()
            seen += truth[:, 0].tolist()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        history.append((loss.item(), right))
        if (step + 1) % log_every == 0:
            loss_, right_ = np.mean(history[-log_every:], axis=0)
            print(f"step {step + 1}/{steps}  count loss {loss_:.4f}  global-view count acc {right_:.3f}  "
                  f"{time.time() - start:.0f}s", flush=True)  # fmt: skip
    print(f"majority count's share over the {len(seen)} global views: {np.bincount(seen).max() / len(seen):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
