"""Stage 1b curricula for carrying colour, shape, centres and the objects' 3x3 cell into the point tokens, on a
tower that learnt the cell in stage 1 (run F's). Phases as TERMS:STEPS, terms joined by '+' from colour, cell,
shape, centre; 'all' = every term (run H's `TokenHead.losses`: the cell on object tokens). The projector starts
fresh, as in train.py; needs run-h.patch (the logs made before it, on run-f.patch, had these terms spelt out here,
the same definitions); accuracy on each batch before its update.

    [LR=1e-3] [BALANCED=1] [BACKGROUND=0.2] PYTHONPATH=. python experiments/where-cell/stage1b_curriculum.py CHECKPOINT cell:100 colour+cell:200 all:200

BALANCED=1: each term's gradient scaled to norm 1 before they are summed (run H's `balanced_step`); BACKGROUND:
the colour term's weight on background tokens (run H's stage 1b: 0)."""

import os
import random
import sys
import time

import numpy as np
import torch

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T

torch.manual_seed(T.TRAIN_SEED + 1)
rng = random.Random(T.TRAIN_SEED + 1)
pipeline = load(sys.argv[1], device="cpu")
phases = [
    (
        terms.split("+") if terms != "all" else ["colour", "cell", "shape", "centre"],
        int(n),
    )
    for terms, n in (a.split(":") for a in sys.argv[2:])
]
model, config = pipeline.model, pipeline.config
model.requires_grad_(False)
projector = model.model.mm_projector.train().requires_grad_(True)
fresh = T.TokenPackerForCausalLM(
    config
).model.mm_projector  # a freshly initialised model's projector (seeded)
projector.load_state_dict(fresh.state_dict())
head = T.TokenHead(config.text_config.hidden_size, config.scale_factor)
make = T.ExampleMaker(pipeline.tokenizer, config)
params = list(projector.parameters()) + list(head.parameters())
lr = float(os.environ.get("LR", "1e-3"))  # stage 1b's
optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
start, history, step = time.time(), [], 0
for terms, steps in phases:
    for _ in range(steps):
        batch = [
            make.views_and_labels(rng, T.WARMUP_SPLIT if rng.random() < 0.5 else None)
            for _ in range(6)
        ]
        views, labels = (
            torch.cat([v for v, _ in batch]),
            torch.cat([lab for _, lab in batch]),
        )
        with torch.no_grad():
            features, multi_level = model.model.vision_tower(views)
        tokens = projector(features, multi_level).tokens
        losses = head.losses(tokens, labels, background=float(os.environ.get("BACKGROUND", "0.2")))
        loss = sum(losses[t] for t in terms)
        if os.environ.get("BALANCED"):
            T.balanced_step(optimizer, params, [losses[t] for t in terms], lr * min(1.0, (step + 1) / 50))
        else:
            T._update(optimizer, params, loss, lr * min(1.0, (step + 1) / 50))
        history.append((loss.item(), *head.accuracy(tokens.detach(), labels)))
        step += 1
        if step % 25 == 0:
            loss_, color, shape, cell = np.nanmean(history[-25:], axis=0)
            print(
                f"step {step} ({'+'.join(terms)})  loss {loss_:.3f}  colour {color:.3f}  shape {shape:.3f}  "
                f"centre-token cell {cell:.3f}  {time.time() - start:.0f}s",
                flush=True,
            )
