"""Whole stage-2 steps, the branch mask's attention in one masked call vs row by row: each step makes its 8
scenes, runs `batch_loss` under the recipe's bfloat16 autocast, backward, clips and steps AdamW (the shipped model,
a fresh copy per block; the same seeded scenes in both ways). Blocks alternate masked / per row.

    PYTHONPATH=. python experiments/row-attention/step_time.py [--split standard|warmup] [--steps 10] [--blocks 2]"""

import argparse
import random
import time

import torch
from row_time import stage2_setup  # this script's folder is on the path when it runs

from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import SPLITS


def block(per_row: bool, split: dict, steps: int) -> float:
    model, make, token_head, where_head = stage2_setup()
    params = [p for p in model.parameters() if p.requires_grad] + list(token_head.parameters()) + list(where_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    rng = random.Random(7)
    start = time.perf_counter()
    for _ in range(steps):
        examples = [make(rng, split) for _ in range(8)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = T.batch_loss(model, token_head, examples, where_head, 1.0, T.KEY_LAYER, 1, per_row=per_row)
        optimizer.zero_grad(set_to_none=True)
        sum(out[:5]).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="standard", choices=["standard", "warmup"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=2)
    args = parser.parse_args()
    split = T.WARMUP_SPLIT if args.split == "warmup" else SPLITS["standard"]
    seconds = {False: [], True: []}
    for _ in range(args.blocks):
        for per_row in (False, True):
            seconds[per_row].append(block(per_row, split, args.steps))
    for per_row, name in ((False, "masked"), (True, "per row")):
        print(f"{args.split}: s / whole step over {args.steps} steps, {name}: " + " ".join(f"{s:.2f}" for s in seconds[per_row]))
    print(f"ratio per row / masked (block means): {sum(seconds[True]) / sum(seconds[False]):.2f}")


if __name__ == "__main__":
    main()
