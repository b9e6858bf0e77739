"""Can the projector carry the 3x3 cell into the object tokens at all? Stage 1b's loop on a run-F tower (cell
learnt in stage 1: tower probe background 0.97, object 0.72), with the cell of the object tokens as the only loss.

    PYTHONPATH=. python experiments/where-cell/projector_cell_only.py CHECKPOINT [STEPS] [LR]   (with run-f.patch applied)"""

import random
import sys

import torch
import torch.nn.functional as F

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T

torch.manual_seed(T.TRAIN_SEED + 1)
rng = random.Random(T.TRAIN_SEED + 1)
pipeline = load(sys.argv[1], device="cpu")
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
model, config = pipeline.model, pipeline.config
model.requires_grad_(False)
projector = model.model.mm_projector.train().requires_grad_(True)
for module in (
    projector.modules()
):  # re-initialised (each module's reset_parameters), as stage 1b starts fresh
    if hasattr(module, "reset_parameters") and module is not projector:
        module.reset_parameters()


class CellOnly(T.TokenHead):
    def loss(self, tokens, labels, color_only=False):
        x = tokens.flatten(0, 1)
        colors, _, _, cells = (
            c.reshape(-1)
            for c in T.token_labels(labels, self.scale).flatten(2).unbind(1)
        )
        placed = (colors > 0) & (cells >= 0)
        return F.cross_entropy(self.cells(x[placed]).float(), cells[placed])


head = CellOnly(config.text_config.hidden_size, config.scale_factor)
make = T.ExampleMaker(pipeline.tokenizer, config)
T.pretrain_projector(
    model, head, make, rng, steps, 0, batch_size=6, lr=lr, log_every=25, gate=2.0
)
