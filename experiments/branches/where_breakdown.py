"""Run BB's `where` answers on the standard split's 1000 questions: row and column right, and accuracy by how far
the object's centre is from the nearest 3x3 cell boundary, by object size and by objects in the scene (no model run:
`evaluation_questions` redraws the scenes, joined with the saved answers):

    PYTHONPATH=. python experiments/branches/where_breakdown.py experiments/branches/answers/bb-standard-1000.json
"""

import json
import sys

from tokenpacker.synthetic.evaluate import evaluation_questions
from tokenpacker.synthetic.scenes import COLUMNS, ROWS

CELLS = {"center"} | {f"{row} {column}" for row in ROWS for column in COLUMNS} - {"middle center"}


def row_and_column(cell: str) -> tuple[int, int]:
    """'top left' -> (0, 0), 'center' -> (1, 1)."""
    if cell == "center":
        return 1, 1
    row, column = cell.split()
    return ROWS.index(row), COLUMNS.index(column)


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
    rows, cells = [], []
    for record, (scene, kind, question, _, obj) in zip(records, evaluation_questions("standard", len(records))):
        assert (record["kind"], record["question"]) == (kind, question), "not the evaluation's questions"
        if kind != "where":
            continue
        rows.append((boundary_margin(scene, obj), obj.size / min(scene.width, scene.height), len(scene.objects),
                     record["answer"] == record["expected"]))
        if record["answer"] in CELLS:
            cells.append((row_and_column(record["expected"]), row_and_column(record["answer"])))
    print(f"where questions: {len(rows)}, accuracy {sum(r[-1] for r in rows) / len(rows):.3f}")
    print(f"answers naming a cell: {len(cells)}; row right {sum(e[0] == a[0] for e, a in cells) / len(cells):.3f}, "
          f"column right {sum(e[1] == a[1] for e, a in cells) / len(cells):.3f}, within one cell "
          f"{sum(max(abs(e[0] - a[0]), abs(e[1] - a[1])) <= 1 for e, a in cells) / len(cells):.3f}")
    print("by the centre's distance from the nearest cell boundary (in cells):")
    table(rows, lambda r: r[0], [(0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.5), (0.5, 1.01)])
    print("by object size (share of the shorter side):")
    table(rows, lambda r: r[1], [(0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.41)])
    print("by objects in the scene:")
    table(rows, lambda r: r[2], [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)])


if __name__ == "__main__":
    main()
