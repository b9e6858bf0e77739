"""Run BB's `where` answers on the standard split's 1000 questions, by how far the object's centre is from the
nearest 3x3 cell boundary and by object size (no model run: the scenes are regenerated from the evaluation's seed
and joined with the saved answers):

    PYTHONPATH=. python experiments/branches/where_breakdown.py experiments/branches/answers/bb-standard-1000.json
"""

import json
import random
import sys

from tokenpacker.synthetic.evaluate import EVAL_SEED
from tokenpacker.synthetic.scenes import QUESTION_TYPES, SPLITS, random_scene, sample_question


def where_questions(n: int):
    """(index, scene, target object) of each `where` question among the evaluation's first n, as `answered_questions`
    draws them."""
    rng = random.Random(EVAL_SEED)
    for i in range(n):
        scene = random_scene(rng, **SPLITS["standard"])
        kind, _, _, target = sample_question(scene, rng, QUESTION_TYPES[i % len(QUESTION_TYPES)])
        if kind == "where":
            yield i, scene, target


def boundary_margin(scene, obj) -> float:
    """Distance of the centre from the nearest inner cell boundary, in cells (0: on a boundary, 0.5: a cell's middle)."""
    fx, fy = 3 * obj.cx / scene.width, 3 * obj.cy / scene.height
    return min(min(abs(fx - b) for b in (1, 2)), min(abs(fy - b) for b in (1, 2)))


def table(rows, key, bins):
    for low, high in bins:
        hits = [ok for value, ok in ((key(r), r[-1]) for r in rows) if low <= value < high]
        if hits:
            print(f"  [{low:.2f}, {high:.2f}): n {len(hits):3d}  accuracy {sum(hits) / len(hits):.3f}")


def main() -> None:
    records = json.load(open(sys.argv[1]))["records"]
    rows = []
    for i, scene, obj in where_questions(len(records)):
        record = records[i]
        assert record["kind"] == "where" and record["question"] == f"Where is the {obj.color} {obj.shape}?"
        rows.append((boundary_margin(scene, obj), obj.size / min(scene.width, scene.height), len(scene.objects),
                     record["answer"] == record["expected"]))
    print(f"where questions: {len(rows)}, accuracy {sum(r[-1] for r in rows) / len(rows):.3f}")
    print("by the centre's distance from the nearest cell boundary (in cells):")
    table(rows, lambda r: r[0], [(0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.5), (0.5, 1.01)])
    print("by object size (share of the shorter side):")
    table(rows, lambda r: r[1], [(0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.41)])
    print("by objects in the scene:")
    table(rows, lambda r: r[2], [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)])


if __name__ == "__main__":
    main()
