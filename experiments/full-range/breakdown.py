"""Where a checkpoint's answers fail on the standard split: accuracy by number of HD tiles, by the size of the
object asked about (its side in pixels of the global view, 336 px for the longer side), and for the counting
questions by the expected count (with the answers given: how far off they are).

    PYTHONPATH=. python experiments/full-range/breakdown.py --model assets/default-model --n 300

The scenes, questions and answers are `evaluate-default --split standard`'s (`answered_questions`).
"""

import argparse
from collections import defaultdict

from tokenpacker.loading import load
from tokenpacker.partition import choose_partition
from tokenpacker.synthetic.evaluate import answered_questions


def bucket_tiles(tiles: int) -> str:
    return "1 view" if tiles == 1 else ("2-4 tiles" if tiles <= 4 else "5-9 tiles")


def bucket_size(side: float) -> str:
    return next(name for limit, name in [(12, "< 12 px"), (24, "12-24 px"), (48, "24-48 px"), (1e9, ">= 48 px")] if side < limit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="assets/default-model")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    pipeline = load(args.model, device="cpu")
    by_tiles, by_size, by_count, given = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
    config = pipeline.model.config
    view = config.vision_config.image_size  # 336
    for record in answered_questions(pipeline, "standard", args.n):
        scene, kind, ok = record.scene, record.kind, record.correct
        tiles = choose_partition(scene.height, scene.width, config.patch_num, view).num_tiles
        by_tiles[(bucket_tiles(tiles), kind)].append(ok)
        by_tiles[(bucket_tiles(tiles), "all")].append(ok)
        if kind in ("count", "count_shape"):
            by_count[(f"{record.expected} expected", kind)].append(ok)
            given[(record.expected, kind)].append(record.answer)
        if record.target is not None:
            side = record.target.size * view / max(scene.width, scene.height)  # the thumbnail's (or only view's) scale
            by_size[(bucket_size(side), kind)].append(ok)
            by_size[(bucket_size(side), "with a target")].append(ok)
    for title, table in [("by tiles", by_tiles), ("by target side in the global view", by_size), ("by expected count", by_count)]:
        print(title)
        for (row, kind), oks in sorted(table.items()):
            print(f"  {row:>10}  {kind:<14} {sum(oks) / len(oks):.3f}  (n={len(oks)})")
    print("counting answers given, by expected count")
    for (expected, kind), answers in sorted(given.items()):
        print(f"  {expected}  {kind:<12} " + "  ".join(f"{a!r}: {answers.count(a)}" for a in sorted(set(answers))))


if __name__ == "__main__":
    main()
