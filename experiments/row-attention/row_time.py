"""One stage-2 batch of branched scenes through `batch_loss`, the branch mask in one masked SDPA call (before) and
row by row (`per_row=True`): the losses and the projector's and LLM's gradients compared in float32, then the
seconds of loss and backward under the recipe's bfloat16 autocast, alternating, in one process.

    PYTHONPATH=. python experiments/row-attention/row_time.py [--split standard|warmup] [--repeats 4]"""

import argparse
import random
import time
from pathlib import Path

import torch

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import SPLITS


def stage2_setup():
    """The shipped model as stage 2 trains it (tower frozen, the training attention), the recipe's branched
    example maker and fresh training-only heads, seed 0. -> (model, make, token_head, where_head)"""
    torch.manual_seed(0)
    pipeline = load(Path("assets/default-model"), device="cpu")
    model, config = pipeline.model, pipeline.model.config
    make = T.ExampleMaker(pipeline.tokenizer, config, count_mark="first", branches=T.BRANCH_QUOTA)
    token_head = T.TokenHead(config.text_config.hidden_size, config.scale_factor)
    head_size = config.text_config.hidden_size // config.text_config.num_attention_heads
    where_head = T.WhereHead(head_size, head=T.WHERE_HEAD)
    model.requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    model.train()
    return model, make, token_head, where_head


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="standard", choices=["standard", "warmup"])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    model, make, token_head, where_head = stage2_setup()
    split = T.WARMUP_SPLIT if args.split == "warmup" else SPLITS["standard"]
    examples = [make(random.Random(5 + i), split) for i in range(8)]
    trained = [p for p in model.parameters() if p.requires_grad]

    def run(per_row: bool):
        model.zero_grad(set_to_none=True)
        out = T.batch_loss(model, token_head, examples, where_head, 1.0, T.KEY_LAYER, 1, per_row=per_row)
        loss = out[0] + out[1] + out[2] + out[3] + out[4]
        loss.backward()
        return [x.item() for x in out[:5]], [p.grad.clone() for p in trained]

    (masked, grads_masked), (rows, grads_rows) = run(False), run(True)
    total = torch.cat([g.flatten() for g in grads_masked]).norm()
    worst = max(((a - b).norm() / total).item() for a, b in zip(grads_rows, grads_masked))
    print("float32 losses (answer, key, patch, attention, where) masked:", " ".join(f"{x:.6f}" for x in masked))
    print("float32 losses (answer, key, patch, attention, where) per row:", " ".join(f"{x:.6f}" for x in rows))
    print(f"largest difference of a parameter's gradient, relative to the whole gradient's norm: {worst:.2e}")
    views = sum(e[0].pixel_values.shape[0] for e in examples)
    print(f"split {args.split}: 8 scenes, {views} views")
    seconds = {False: [], True: []}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(args.repeats):
            for per_row in (False, True):
                start = time.perf_counter()
                run(per_row)
                seconds[per_row].append(time.perf_counter() - start)
    for per_row, name in ((False, "masked"), (True, "per row")):
        print(f"bfloat16 loss + backward, {name}: " + " ".join(f"{s:.2f}" for s in seconds[per_row]) + " s")
    print(f"ratio per row / masked (medians): {sorted(seconds[True])[len(seconds[True]) // 2] / sorted(seconds[False])[len(seconds[False]) // 2]:.2f}")


if __name__ == "__main__":
    main()
