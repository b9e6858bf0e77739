"""Time one stage-2 training step (batch_loss + backward, the same batch) under bfloat16 autocast, as
`train_mllm` has always run it, and in float32, on this machine; print whether its CPU does bfloat16 natively.

    PYTHONPATH=. python experiments/speed/autocast_time.py [CHECKPOINT] [--repeats 2]   # -> autocast-time-*.log

On a CPU without native bfloat16 (no AVX512-BF16 / AMX: e.g. AMD Zen 3, AVX2 only) bfloat16 matrix products
fall back to a slow path; the first line shows a plain 512 x 512 product in each dtype, one thread."""

import argparse
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import SPLITS


def matmul_gflops(dtype: torch.dtype, repeats: int = 10) -> float:
    a, b = torch.randn(512, 512, dtype=dtype), torch.randn(512, 512, dtype=dtype)
    a @ b
    start = time.time()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * 512**3 / (time.time() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", nargs="?", default="assets/default-model")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bfloat16 {T.cpu_does_bfloat16()}; "
          f"512x512 matmul, 1 thread: float32 {matmul_gflops(torch.float32):.1f} GFLOP/s, "
          f"bfloat16 {matmul_gflops(torch.bfloat16):.1f} GFLOP/s")
    torch.set_num_threads(threads)
    pipeline = load(Path(args.checkpoint), device="cpu")
    model = pipeline.model.train().requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    make = T.ExampleMaker(pipeline.tokenizer, model.config, max_turns=8)
    rng = random.Random(0)
    examples = [make(rng, SPLITS["small"] if i % 4 == 0 else SPLITS["standard"]) for i in range(8)]
    print("views per scene", [e[0].pixel_values.shape[0] for e in examples])
    for name, context in [("bfloat16 autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
                          ("float32", nullcontext)]:
        seconds = []
        for _ in range(args.repeats):
            model.zero_grad(set_to_none=True)
            start = time.time()
            with context():
                answer, key, _, attention, _, _, _ = T.batch_loss(model, None, examples)
            (answer + key + 0.5 * attention).backward()
            seconds.append(time.time() - start)
        print(f"{name}: s/step {' '.join(f'{s:.2f}' for s in seconds)}  answer loss {answer.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
