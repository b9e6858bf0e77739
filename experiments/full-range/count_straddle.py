"""Do counting answers over-count the objects that HD tiles cut in two? For `How many ...?` questions of the standard
split (`evaluate-default`'s scenes, questions and answers), the counted objects whose box meets more than one tile,
against how the answer misses.

    PYTHONPATH=. python experiments/full-range/count_straddle.py --model assets/default-model --n 600
"""

import argparse
from collections import defaultdict

from tokenpacker.image_processing import ImageProcessor
from tokenpacker.loading import load
from tokenpacker.synthetic.evaluate import answered_questions


def tile_boxes(views) -> list[tuple[float, float, float, float]]:
    """The image boxes (x0, y0, x1, y1) of the HD tiles (none for a single view)."""
    return [(*v.to_image(0, 0), *v.to_image(v.size, v.size)) for v in views if v.kind == "tile"]


def meets(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="assets/default-model")
    parser.add_argument("--n", type=int, default=600)
    args = parser.parse_args()
    pipeline = load(args.model, device="cpu")
    processor = ImageProcessor(pipeline.model.config)
    misses = defaultdict(list)  # (kind, cut objects: "0" / "1" / "2+") -> [answer - expected, or None if not a digit]
    for record in answered_questions(pipeline, "standard", args.n):
        if record.kind not in ("count", "count_shape"):
            continue
        shape = None if record.kind == "count" else record.question.split()[2].removesuffix("s")
        counted = [o for o in record.scene.objects if shape is None or o.shape == shape]
        tiles = tile_boxes(processor(record.scene.render()).views)
        cut = sum(sum(meets(o.box, t) for t in tiles) > 1 for o in counted)
        given = int(record.answer) if record.answer.isdigit() else None
        misses[(record.kind, "0" if cut == 0 else ("1" if cut == 1 else "2+"))].append(
            None if given is None else given - int(record.expected))
    print(f"{args.model}, standard split, {args.n} questions: counting questions by how many counted objects the tiles cut")
    print(f"  {'kind':<12} {'cut':>3} {'n':>4} {'right':>6} {'over':>6} {'under':>6} {'mean miss':>9}")
    for (kind, cut), rows in sorted(misses.items()):
        digits = [d for d in rows if d is not None]
        print(f"  {kind:<12} {cut:>3} {len(rows):>4} {sum(d == 0 for d in digits) / len(rows):>6.2f} "
              f"{sum(d > 0 for d in digits) / len(rows):>6.2f} {sum(d < 0 for d in digits) / len(rows):>6.2f} "
              f"{sum(digits) / max(1, len(digits)):>+9.2f}")


if __name__ == "__main__":
    main()
