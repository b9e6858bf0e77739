"""Time one stage-2 training step (batch_loss + backward) with and without an attention mask, same batch.

    PYTHONPATH=. python experiments/speed/step_time.py [CHECKPOINT] [--repeats 3]

`batch_loss` pads its conversations on the right and passes no mask (causal attention keeps the padding out
of every real token's view), so SDPA takes its causal kernel. This script puts back the padding mask the
earlier code passed (rebuilt from the padded rows, which are exactly zero) to compare: the losses and the
projector's gradient, and the seconds per step of each (8 scenes, 3 in 4 from the standard split, as stage 2's
full range)."""

import argparse
import time

import torch

from tokenpacker.synthetic import train as T

from stage2_batch import stage2_batch  # next to this script: the set-up the step timings share


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", nargs="?", default="assets/default-model")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, examples = stage2_batch(args.checkpoint)
    forward = type(model).forward

    def with_padding_mask(self, *a, **k):
        k["attention_mask"] = (k["inputs_embeds"] != 0).any(-1).long()  # (B, T): 1 on real tokens
        return forward(self, *a, **k)

    results = {}
    for name, patched in [("padding mask (before)", with_padding_mask), ("no mask (now)", forward)]:
        type(model).forward = patched
        seconds = []
        for _ in range(args.repeats):
            model.zero_grad(set_to_none=True)
            start = time.time()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                answer, key, _, attention, _, masses, _ = T.batch_loss(model, None, examples)
            (answer + key + 0.5 * attention).backward()
            seconds.append(time.time() - start)
        grad = torch.cat([p.grad.flatten() for p in model.model.mm_projector.parameters() if p.grad is not None])
        results[name] = grad
        print(f"{name}: s/step {' '.join(f'{s:.2f}' for s in seconds)}  answer loss {answer.item():.6f}  "
              f"key loss {key.item():.6f}  attention loss {attention.item():.6f}  projector grad norm {grad.norm():.6f}")
    type(model).forward = forward
    before, now = results.values()
    print(f"projector gradient, relative difference: {((before - now).norm() / before.norm()).item():.2e}")


if __name__ == "__main__":
    main()
