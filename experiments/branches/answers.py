"""A checkpoint's answers to `evaluate-default`'s held-out questions, saved for pairing later without rerunning it:

    PYTHONPATH=. python experiments/branches/answers.py MODEL OUT.json [--n 1000] [--split standard] [--max-tiles K] [--seed S]
    PYTHONPATH=. python experiments/branches/answers.py --pair A.json B.json [A2.json B2.json ...]
    PYTHONPATH=. python experiments/branches/answers.py --errors A.json [A2.json ...]

`--pair` prints each file's accuracy (per type too) and B - A with its paired standard error (as
experiments/mark-and-readout/paired.py does, from the questions only one of them gets right); given several pairs
(each pair one set of questions), it also prints B - A pooled over all their questions, and by question type."""

import argparse
import json
import math
from collections import Counter, defaultdict


def pair(path_a: str, path_b: str) -> tuple[list, list, list]:
    a, b = (json.load(open(path)) for path in (path_a, path_b))
    assert [r["question"] for r in a["records"]] == [r["question"] for r in b["records"]], "not the same questions"
    for name, run in (("A", a), ("B", b)):
        per_type = defaultdict(list)
        for r in run["records"]:
            per_type[r["kind"]].append(r["answer"] == r["expected"])
        total = sum(sum(v) for v in per_type.values()) / len(run["records"])
        print(f"{name} {run['model']}: {total:.4f} " + " ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in sorted(per_type.items())))
    right_a = [r["answer"] == r["expected"] for r in a["records"]]
    right_b = [r["answer"] == r["expected"] for r in b["records"]]
    paired_difference(right_a, right_b)
    return [r["kind"] for r in a["records"]], right_a, right_b


def paired_difference(right_a: list, right_b: list, label: str = "") -> None:
    n = len(right_a)
    only_a = sum(x and not y for x, y in zip(right_a, right_b))
    only_b = sum(y and not x for x, y in zip(right_a, right_b))
    se = math.sqrt(only_a + only_b - (only_b - only_a) ** 2 / n) / n
    print(f"{label}n {n}  only A right {only_a}  only B right {only_b}  B - A {(only_b - only_a) / n:+.4f}  paired SE {se:.4f}")


def errors(paths: list[str]) -> None:
    """Per question type, pooled over the files: the number of wrong answers, the commonest (expected -> answer)
    confusions, and the accuracy by expected answer."""
    records = [r for path in paths for r in json.load(open(path))["records"]]
    for kind in sorted({r["kind"] for r in records}):
        wrong = Counter((r["expected"], r["answer"]) for r in records if r["kind"] == kind and r["answer"] != r["expected"])
        top = ", ".join(f"{e} -> {a} {k}" for (e, a), k in wrong.most_common(6))
        print(f"{kind}: {sum(wrong.values())} wrong of {sum(r['kind'] == kind for r in records)}; {top}")
        right_by_expected = defaultdict(list)
        for r in records:
            if r["kind"] == kind:
                right_by_expected[r["expected"]].append(r["answer"] == r["expected"])
        print("  by expected answer: " + ", ".join(f"{e} {sum(v) / len(v):.2f} of {len(v)}" for e, v in sorted(right_by_expected.items())))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--pair", action="store_true")
    parser.add_argument("--errors", action="store_true")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--split", default="standard")
    parser.add_argument("--max-tiles", type=int)
    parser.add_argument("--seed", type=int, help="the questions' seed (default: evaluate-default's, EVAL_SEED)")
    args = parser.parse_args()
    if args.pair:
        if len(args.paths) % 2:
            parser.error("--pair takes A.json B.json, or several such pairs to pool")
        kinds, pooled_a, pooled_b = [], [], []
        for path_a, path_b in zip(args.paths[::2], args.paths[1::2]):
            for pooled, part in zip((kinds, pooled_a, pooled_b), pair(path_a, path_b)):
                pooled += part
        if len(args.paths) > 2:
            paired_difference(pooled_a, pooled_b, label="pooled: ")
            for kind in sorted(set(kinds)):
                a, b = ([x for k, x in zip(kinds, right) if k == kind] for right in (pooled_a, pooled_b))
                print(f"pooled {kind}: n {len(a)}  A {sum(a) / len(a):.3f}  B {sum(b) / len(b):.3f}  B - A {(sum(b) - sum(a)) / len(a):+.3f}")
        return
    if args.errors:
        return errors(args.paths)
    from tokenpacker.loading import load
    from tokenpacker.synthetic.evaluate import EVAL_SEED, answered_questions

    model, out = args.paths
    seed = EVAL_SEED if args.seed is None else args.seed
    records = [{"kind": r.kind, "question": r.question, "expected": r.expected, "answer": r.answer}
               for r in answered_questions(load(model, device="cpu"), args.split, args.n, args.max_tiles, seed)]  # fmt: skip
    run = {"model": model, "split": args.split, "n": args.n, "max_tiles": args.max_tiles, "seed": seed, "records": records}
    json.dump(run, open(out, "w"), indent=0)  # files written before --seed existed have no "seed": EVAL_SEED


if __name__ == "__main__":
    main()
