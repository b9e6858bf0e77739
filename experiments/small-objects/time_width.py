"""Stage 1's cost a step by the tower's width, measured in one process on this machine (the ratio is the figure).

    PYTHONPATH=. python experiments/small-objects/time_width.py [--widths 64 128] [--steps 40]

Each width: a fresh model of the recipe (`default_config(vision_width=)`) and `PatchHead`, then `--steps` of
`pretrain_vision` in each of stage 1's two phases (shape alone on the warm-up canvases; all terms on the warm-up
canvases and the full range half and half), the same seeded scenes for every width; seconds a step, each phase.
"""

import argparse
import contextlib
import io
import random
import tempfile
import time

import torch

from tokenpacker.modeling import TokenPackerForCausalLM
from tokenpacker.synthetic.train import TRAIN_SEED, ExampleMaker, PatchHead, default_config, pretrain_vision, tokenizer_corpus
from tokenpacker.tokenizer import LlamaTokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = LlamaTokenizer.train(tokenizer_corpus(), folder, vocab_size=500, hard_vocab_limit=False)
        seconds = measure(tokenizer, args.widths, args.steps)
    base = args.widths[0]
    print(f"stage 1 seconds a step ({args.steps} steps a phase, batch 6, torch threads {torch.get_num_threads()})")
    for width in args.widths:
        print(f"  width {width:>4}: " + "  ".join(
            f"{phase} {seconds[width, phase]:.3f} s ({seconds[width, phase] / seconds[base, phase]:.2f}x)"
            for phase in ("shape alone", "all terms")))  # fmt: skip


def measure(tokenizer, widths: list[int], steps: int) -> dict:
    seconds = {}
    for width in widths:
        torch.manual_seed(TRAIN_SEED)
        config = default_config(tokenizer, width)
        model = TokenPackerForCausalLM(config).train()
        head = PatchHead(width * len(config.mm_vision_feature_layers), cells=True)
        make = ExampleMaker(tokenizer, config)
        for phase, shape_steps in (("shape alone", steps), ("all terms", 0)):
            rng = random.Random(TRAIN_SEED)
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                pretrain_vision(model, head, make, rng, steps, shape_steps, batch_size=6, lr=1e-3,
                                log_every=steps, cell_start=0)  # fmt: skip
            seconds[width, phase] = (time.perf_counter() - start) / steps
    return seconds


if __name__ == "__main__":
    main()
