"""Time one stage-2 training step (batch_loss + backward, the same batch) under bfloat16 autocast, as
`train_mllm` has always run it, and in float32, on this machine; print whether its CPU does bfloat16 natively.

    PYTHONPATH=. python experiments/speed/autocast_time.py [CHECKPOINT] [--repeats 2]   # -> autocast-time-*.log

On a CPU without native bfloat16 (no AVX512-BF16 / AMX: e.g. AMD Zen 3, AVX2 only) bfloat16 matrix products
fall back to a slow path; the first line shows a plain 512 x 512 product in each dtype, one thread."""

import argparse
import time
from contextlib import nullcontext

import torch

from tokenpacker.synthetic import train as T

from stage2_batch import stage2_batch  # next to this script: the set-up the step timings share


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
    model, examples = stage2_batch(args.checkpoint)
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
