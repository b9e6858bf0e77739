"""What the wrong answers are: saved answers (experiments/branches/answers.py) joined with their scenes, regenerated
from the evaluation's seed (no model run).

    PYTHONPATH=. python experiments/error-anatomy/anatomy.py ANSWERS.json [ANSWERS2.json ...]

Per question type, the accuracy by the size of the object asked about (its side as a share of the canvas's shorter
side, and in the canvas's pixels), and what the wrong answers are:
- colour / shape: the colour (shape) of another object in the scene (the model found the wrong object) or of none
  (it misread the right one, or read nothing);
- exists, `no` expected: whether the scene holds an object of that colour or of that shape (a half match);
- where: the answer's cell one step from the truth (a row or a column off, or both by one) or further, and how
  far the object's centre is from the nearest cell border, as a share of the cell's side.
"""

import json
import sys
from collections import Counter, defaultdict

from experiments.objects import bin_name, bin_names
from tokenpacker.synthetic.evaluate import EVAL_SEED, evaluation_questions
from tokenpacker.synthetic.scenes import COLUMNS, ROWS

SIZE_BINS = [0.05, 0.10, 0.20, 1.0]  # the object's side / the canvas's shorter side
PIXEL_BINS = [8, 16, 32, 10_000]  # the object's side in the canvas's pixels


def cell(answer: str) -> tuple[int, int] | None:
    words = ("middle", "center") if answer == "center" else tuple(answer.split())
    if len(words) != 2 or words[0] not in ROWS or words[1] not in COLUMNS:
        return None
    return ROWS.index(words[0]), COLUMNS.index(words[1])


def border_distance(scene, target) -> float:
    """The centre's distance to the nearest inner cell border, as a share of the cell's side (0.5: the cell's middle)."""
    u, v = 3 * target.cx / scene.width, 3 * target.cy / scene.height
    return min(min(abs(u - 1), abs(u - 2)), min(abs(v - 1), abs(v - 2)))


def main(paths: list[str]) -> None:
    by_size = defaultdict(lambda: defaultdict(list))  # kind -> size bin -> [right]
    by_pixels = defaultdict(lambda: defaultdict(list))  # kind -> pixel bin -> [right]
    wrong = defaultdict(Counter)  # kind -> what the wrong answers are
    asked = Counter()
    near_border = defaultdict(list)  # right/wrong -> [border distance] for `where`
    for path in paths:
        run = json.load(open(path))
        seed = run.get("seed") or EVAL_SEED
        questions = evaluation_questions(run["split"], run["n"], seed)
        for record, (scene, kind, question, expected, target) in zip(run["records"], questions):
            assert (record["question"], record["expected"]) == (question, expected), f"{path}: not its seed's questions"
            right = record["answer"] == expected
            asked[kind] += 1
            if target is not None:
                by_size[kind][bin_name(target.size / min(scene.width, scene.height), SIZE_BINS, ".2f")].append(right)
                by_pixels[kind][bin_name(target.size, PIXEL_BINS, "d")].append(right)
            others = [o for o in scene.objects if o is not target]
            if kind == "where" and target is not None:
                near_border["right" if right else "wrong"].append(border_distance(scene, target))
            if right:
                continue
            answer = record["answer"]
            if kind in ("color", "shape"):
                attribute = "color" if kind == "color" else "shape"
                found = answer in {getattr(o, attribute) for o in others}
                wrong[kind]["another object's" if found else "no object's"] += 1
            elif kind == "exists" and expected == "no":
                words = question.rstrip("?").split()
                color, shape = words[-2], words[-1]
                half = ("colour" if any(o.color == color for o in scene.objects) else "") + \
                       ("+shape" if any(o.shape == shape for o in scene.objects) else "")
                wrong[kind]["said yes; scene has its " + (half.strip("+") or "neither")] += 1
            elif kind == "exists":
                wrong[kind]["said no to a yes"] += 1
            elif kind == "where":
                got, truth = cell(answer), cell(expected)
                steps = None if got is None else max(abs(got[0] - truth[0]), abs(got[1] - truth[1]))
                wrong[kind]["not a cell" if steps is None else "one step off" if steps == 1 else "two steps off"] += 1
    print(f"# {len(paths)} file(s): " + ", ".join(paths))
    for title, table, bins in (("the target's side / the canvas's shorter side", by_size, bin_names(SIZE_BINS, ".2f")),
                               ("the target's side in pixels", by_pixels, bin_names(PIXEL_BINS, "d"))):
        print(f"accuracy by {title} (questions naming one object)")
        print(f"  {'type':<7} " + " ".join(f"{b:>14}" for b in bins))
        for kind in sorted(table):
            cells = [table[kind].get(b, []) for b in bins]
            print(f"  {kind:<7} " + " ".join(f"{sum(c) / len(c):>6.3f} (n={len(c):>4})" if c else f"{'-':>14}"
                                           for c in cells))  # fmt: skip
    print("what the wrong answers are")
    for kind in sorted(wrong):
        total = sum(wrong[kind].values())
        print(f"  {kind:<7} {total:>4} wrong of {asked[kind]}: " +
              ", ".join(f"{name} {n} ({n / total:.2f})" for name, n in wrong[kind].most_common()))
    for outcome in ("right", "wrong"):
        distances = near_border[outcome]
        if distances:
            close = sum(d < 0.1 for d in distances) / len(distances)
            print(f"  where, {outcome}: {len(distances)} answers, centre within 0.1 of a cell's side from a border "
                  f"{close:.2f}, mean distance {sum(distances) / len(distances):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
