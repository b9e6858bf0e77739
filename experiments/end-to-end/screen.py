"""Screen a stage-2 change cheaply: continue stage 2 of a checkpoint on one split and log teacher-forced accuracy.

    python experiments/end-to-end/screen.py CKPT STEPS [--tower] [--min-turns A --max-turns B] [--split warmup|standard]
                                            [--oracle-position SCALE] [--save DIR]

Starts from CKPT's tower, projector and LLM (a fresh TokenHead), trains as stage 2 does (`batch_loss`, same
loss weights), at a constant learning rate. `--tower` trains the vision tower too (stage 2 freezes it).
`--oracle-position SCALE` is a diagnostic, not a model change: it adds to every point token a fixed 2-D sine-cosine
code of its place on the view's G x G grid (SCALE times the tokens' mean norm), so that the LLM gets position in the
tokens for free, and shows whether `where` is then learnt (the bottleneck is getting position into the tokens) or
not (it is the LLM's side)."""

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import SPLITS

sys.path.insert(0, str(Path(__file__).parent.parent / "where-oracle"))
from oracle import add_oracle_position  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("ckpt", type=Path)
parser.add_argument("steps", type=int)
parser.add_argument("--tower", action="store_true")
parser.add_argument("--tower-lr", type=float, default=3e-4)
parser.add_argument("--lr", type=float, default=3e-4)
parser.add_argument("--min-turns", type=int, default=1)
parser.add_argument("--max-turns", type=int, default=8)
parser.add_argument("--split", default="warmup")
parser.add_argument("--seed", type=int, default=99)
parser.add_argument("--oracle-position", type=float, default=0.0)
parser.add_argument("--save", type=Path, help="save the screened model here")
args = parser.parse_args()

torch.manual_seed(args.seed)
rng = random.Random(args.seed)
pipe = load(args.ckpt, device="cpu")
model, tokenizer = pipe.model.train(), pipe.tokenizer
model.requires_grad_(True)
model.model.vision_tower.requires_grad_(args.tower)
model.set_attn_implementation(T.TRAINING_ATTENTION)
if args.oracle_position:
    add_oracle_position(model, args.oracle_position)
token_head = T.TokenHead(model.config.text_config.hidden_size, model.config.scale_factor)
make = T.ExampleMaker(tokenizer, model.config, max_turns=args.max_turns, min_turns=args.min_turns)
split = T.WARMUP_SPLIT if args.split == "warmup" else SPLITS[args.split]
groups = [{"params": [p for n, p in model.named_parameters() if "vision_tower" not in n] + list(token_head.parameters()), "lr": args.lr}]
if args.tower:
    groups.append({"params": list(model.model.vision_tower.parameters()), "lr": args.tower_lr})
optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.0)
params = [p for g in groups for p in g["params"]]
start, scores, answers = time.time(), [], []
for step in range(args.steps):
    examples = [make(rng, split) for _ in range(8)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        answer_loss, key_loss, patch_loss, attention_loss, masses, batch_scores = T.batch_loss(model, token_head, examples)
    loss = answer_loss + key_loss + 0.3 * patch_loss + 0.5 * attention_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scores.append(batch_scores)
    answers.append(len(batch_scores))
    if (step + 1) % 25 == 0:
        print(f"step {step + 1}  answers/step {np.mean(answers[-25:]):.1f}  {time.time() - start:.0f}s  "
              f"train acc {T._accuracy_line(scores[-25:])}", flush=True)
if args.save:
    pipe.save_pretrained(args.save)
