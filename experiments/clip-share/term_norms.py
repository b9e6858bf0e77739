"""Each stage-2 loss term's share of the gradient that stage 2 clips to norm 1, on a checkpoint of the recipe.

    PYTHONPATH=. python experiments/clip-share/term_norms.py MODEL BATCHES [--split warmup|standard]

For BATCHES fresh batches of 8 conversations (the recipe's ExampleMaker, seed 777), the gradient norm over the
projector and the LLM of each weighted term of `batch_loss` alone (answer; key word x1; attention x0.5; `where`
read-out x1, from a fresh WhereHead, as at stage 2's start, where the read-out stays near chance all the run)
and of their sum, with and without the read-out; and the same per block (the projector, each LLM layer, the embeddings, lm_head, the final norm). The dense probe's term is left out (its TokenHead is not saved with the checkpoint)."""

import random
import sys

import numpy as np
import torch

from tokenpacker.loading import load
from tokenpacker.synthetic.scenes import SPLITS
from tokenpacker.synthetic.train import WARMUP_SPLIT, ExampleMaker, TRAINING_ATTENTION, WhereHead, batch_loss

model_dir, batches = sys.argv[1], int(sys.argv[2])
split = WARMUP_SPLIT if "--split" in sys.argv and sys.argv[sys.argv.index("--split") + 1] == "warmup" else SPLITS["standard"]
pipeline = load(model_dir, device="cpu")
model = pipeline.model.train()
model.set_attn_implementation(TRAINING_ATTENTION)
for name, p in model.named_parameters():
    p.requires_grad_(not name.startswith("model.vision_tower."))  # stage 2 trains the projector and the LLM
named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
params = [p for _, p in named]
block = lambda n: ("projector" if "mm_projector" in n else n.split(".")[2] if ".layers." in n else n.split(".")[-2])
blocks = sorted({block(n) for n, _ in named}, key=lambda b: (b != "projector", b))
torch.manual_seed(0)
where_head = WhereHead(model.config.text_config.hidden_size)
make = ExampleMaker(pipeline.tokenizer, model.config, max_turns=8, count_mark="first")
rng = random.Random(777)
names = ["answer", "key", "attention", "where", "sum", "sum without where"]
norms = {n: [] for n in names}
per_block = {(n, b): [] for n in names for b in blocks}
for _ in range(batches):
    examples = [make(rng, split) for _ in range(8)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        answer, key, _, attention, where, _, _ = batch_loss(model, None, examples, where_head)
    terms = {"answer": answer, "key": 1.0 * key, "attention": 0.5 * attention, "where": 1.0 * where}
    terms["sum"] = sum(terms.values())
    terms["sum without where"] = terms["sum"] - terms["where"]
    for name, term in terms.items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        squares = [((n, (g.float() ** 2).sum().item()) if g is not None else (n, 0.0)) for (n, _), g in zip(named, grads)]
        norms[name].append(sum(v for _, v in squares) ** 0.5)
        for b in blocks:
            per_block[name, b].append(sum(v for n, v in squares if block(n) == b) ** 0.5)
for name in names:
    print(f"{name:10s} gradient norm mean {np.mean(norms[name]):.3f}  (per batch: {' '.join(f'{v:.2f}' for v in norms[name])})")
print("per block (mean gradient norm):", "  ".join(f"{b:>10s}" for b in blocks))
for name in names:
    print(f"{name:18s}", "  ".join(f"{np.mean(per_block[name, b]):10.3f}" for b in blocks))
