"""Do counting answers over-count the objects that HD tiles cut in two? For `How many ...?` questions of the standard
split (`evaluate-default`'s scenes, questions and answers), the counted objects whose box meets more than one tile,
against how the answer misses.

    PYTHONPATH=. python experiments/full-range/count_straddle.py --model assets/default-model --n 600
    PYTHONPATH=. python experiments/full-range/count_straddle.py --model assets/default-model --n 600 --max-tiles 1
    PYTHONPATH=. python experiments/full-range/count_straddle.py --model assets/default-model --n 3000 [--max-tiles 1]

`--max-tiles K` answers with at most K tiles; which objects are "cut" is always judged on the full HD partition,
so the rows of two runs are the same questions.
"""

import argparse
from collections import defaultdict

from tokenpacker.image_processing import ImageProcessor
from tokenpacker.loading import load
from tokenpacker.synthetic.evaluate import answered_questions

SIZE_BINS = [("< 0.15", 0.15), ("0.15-0.25", 0.25), (">= 0.25", float("inf"))]


def tile_boxes(views) -> list[tuple[float, float, float, float]]:
    """The image boxes (x0, y0, x1, y1) of the HD tiles (none for a single view)."""
    return [(*v.to_image(0, 0), *v.to_image(v.size, v.size)) for v in views if v.kind == "tile"]


def meets(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="assets/default-model")
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--max-tiles", type=int, default=None, help="answer with at most this many tiles")
    args = parser.parse_args()
    pipeline = load(args.model, device="cpu")
    processor = ImageProcessor(pipeline.model.config)
    rows = []  # (kind, expected count, cut objects, answer - expected or None if not a digit, largest counted object)
    for record in answered_questions(pipeline, "standard", args.n, max_tiles=args.max_tiles):
        if record.kind not in ("count", "count_shape"):
            continue
        shape = None if record.kind == "count" else record.question.split()[2].removesuffix("s")
        counted = [o for o in record.scene.objects if shape is None or o.shape == shape]
        tiles = tile_boxes(processor(record.scene.render()).views)
        cut = sum(sum(meets(o.box, t) for t in tiles) > 1 for o in counted)
        given = int(record.answer) if record.answer.isdigit() else None
        largest = max((o.size for o in counted), default=0) / min(record.scene.width, record.scene.height)
        rows.append((record.kind, int(record.expected), cut, None if given is None else given - int(record.expected),
                     largest))  # fmt: skip
    answered_with = "all tiles" if args.max_tiles is None else f"--max-tiles {args.max_tiles}"
    print(f"{args.model}, standard split, {args.n} questions, answered with {answered_with}: counting questions by how "
          "many counted objects the (full) HD partition's tiles cut")
    by_cut, by_count, by_size = defaultdict(list), defaultdict(list), defaultdict(list)
    for kind, count, cut, miss, largest in rows:
        by_cut[kind, "0" if cut == 0 else ("1" if cut == 1 else "2+")].append((count, miss))
        if kind == "count":
            by_count[count, "0" if cut == 0 else "1+"].append((count, miss))
        if kind == "count" and 2 <= count <= 4:
            size = next(i for i, (_, top) in enumerate(SIZE_BINS) if largest < top)  # SIZE_BINS' index
            by_size[size, "0" if cut == 0 else "1+"].append((count, miss))
    print(f"  {'kind':<12} {'cut':>3} {'n':>4} {'right':>6} {'over':>6} {'under':>6} {'mean miss':>9} {'expected':>8}")
    for (kind, cut), group in sorted(by_cut.items()):
        print(f"  {kind:<12} {cut:>3} {len(group):>4} {summary(group)} {sum(c for c, _ in group) / len(group):>8.2f}")
    print("`How many objects are there?` by the expected count, with no counted object cut / one or more cut")
    print(f"  {'expected':>8} {'cut':>4} {'n':>4} {'right':>6} {'over':>6} {'under':>6} {'mean miss':>9}")
    for (count, cut), group in sorted(by_count.items()):
        print(f"  {count:>8} {cut:>4} {len(group):>4} {summary(group)}")
    print("`How many objects are there?` with 2-4 objects, by the largest object's size (share of the canvas's shorter side)")
    print(f"  {'largest':>9} {'cut':>4} {'n':>4} {'right':>6} {'over':>6} {'under':>6} {'mean miss':>9}")
    for (size, cut), group in sorted(by_size.items()):
        print(f"  {SIZE_BINS[size][0]:>9} {cut:>4} {len(group):>4} {summary(group)}")


def summary(group: list[tuple[int, int | None]]) -> str:
    """right / over / under shares (of all, a non-digit answer counts as none) and the mean miss of the digits"""
    digits = [m for _, m in group if m is not None]
    shares = (sum(m == 0 for m in digits), sum(m > 0 for m in digits), sum(m < 0 for m in digits))
    return " ".join(f"{s / len(group):>6.2f}" for s in shares) + f" {sum(digits) / max(1, len(digits)):>+9.2f}"


if __name__ == "__main__":
    main()
