"""Two checkpoints on the same held-out questions, paired: how many each gets right, how many only one of them
does, and the standard error of the difference in accuracy from the discordant pairs (paired, as McNemar's).

    PYTHONPATH=. python experiments/mark-and-readout/paired.py CHECKPOINT_A CHECKPOINT_B [--n 1000] [--split standard]

The questions are `evaluate-default`'s (`answered_questions`, the evaluation seed): the same scenes and questions
for both, so the difference is not blurred by which questions were drawn."""

import argparse
import math

from tokenpacker.loading import load
from tokenpacker.synthetic.evaluate import answered_questions

parser = argparse.ArgumentParser()
parser.add_argument("a")
parser.add_argument("b")
parser.add_argument("--n", type=int, default=1000)
parser.add_argument("--split", default="standard")
args = parser.parse_args()
records = {name: list(answered_questions(load(path, device="cpu"), args.split, n=args.n))
           for name, path in (("A", args.a), ("B", args.b))}  # fmt: skip
assert [r.question for r in records["A"]] == [r.question for r in records["B"]]
right_a = [r.correct for r in records["A"]]
right_b = [r.correct for r in records["B"]]
only_a = sum(a and not b for a, b in zip(right_a, right_b))
only_b = sum(b and not a for a, b in zip(right_a, right_b))
n = args.n
difference = (sum(right_b) - sum(right_a)) / n
se = math.sqrt(only_a + only_b - (only_b - only_a) ** 2 / n) / n  # of the mean of the paired differences
print(f"# A = {args.a}, B = {args.b}, {args.split} split, {n} questions")
print(f"A right {sum(right_a)} ({sum(right_a) / n:.4f}), B right {sum(right_b)} ({sum(right_b) / n:.4f})")
print(f"both right {sum(a and b for a, b in zip(right_a, right_b))}, only A {only_a}, only B {only_b}, neither "
      f"{sum(not a and not b for a, b in zip(right_a, right_b))}")  # fmt: skip
print(f"B - A: {difference:+.4f}, paired standard error {se:.4f} ({difference / se:+.1f} standard errors)")
for kind in sorted({r.kind for r in records["A"]}):
    pairs = [(a.correct, b.correct) for a, b in zip(records["A"], records["B"]) if a.kind == kind]
    print(f"  {kind}: A {sum(a for a, _ in pairs) / len(pairs):.3f}  B {sum(b for _, b in pairs) / len(pairs):.3f}  "
          f"only A {sum(a and not b for a, b in pairs)}  only B {sum(b and not a for a, b in pairs)}  (n={len(pairs)})")
