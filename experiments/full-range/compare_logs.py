"""Stage 2's teacher-forced means over the full range of canvases, at matched full-range steps, for runs whose
full range starts at different stage-2 steps (run T at 1400, U at 800, V at 400).

    python experiments/full-range/compare_logs.py T=experiments/where-late-readout/run-t-training.log:1400 \
        U=experiments/full-range/run-u-training.log:800 V=experiments/full-range/run-v-training.log:400
    # -> run-v-vs-u-vs-t-stage2.txt

Each row: the runs' means of [key word's attention mass on the target, colour, shape, count, count_shape, exists,
where] over the logged steps of that block of full-range steps ('-' where a run has none).
"""

import re
import sys

import numpy as np

LINE = re.compile(r"step (\d+)/\d+ .*key word ([\d.]+).*train acc color ([\d.]+) shape ([\d.]+) count ([\d.]+) "
                  r"count_shape ([\d.]+) exists ([\d.]+) where ([\d.]+)")  # fmt: skip
BLOCKS = [(25, 100), (125, 200), (225, 300), (325, 400), (425, 500), (525, 600), (625, 700), (725, 800),
          (825, 900), (925, 960)]  # fmt: skip


def stage2_lines(path: str) -> dict[int, list[float]]:
    """step -> [key word's attention mass on target, colour, shape, count, count_shape, exists, where]"""
    found = (LINE.match(line) for line in open(path))
    return {int(m[1]): [float(x) for x in m.groups()[1:]] for m in found if m}


def block_mean(lines: dict, full_range_start: int, first: int, last: int) -> str:
    rows = [lines[full_range_start + k] for k in range(first, last + 1, 25) if full_range_start + k in lines]
    return " ".join(f"{x:.2f}" for x in np.mean(rows, axis=0)) if rows else "-"


def main() -> None:
    runs = []  # (name, lines, full-range start)
    for argument in sys.argv[1:]:
        name, rest = argument.split("=", 1)
        path, start = rest.rsplit(":", 1)
        runs.append((name, stage2_lines(path), int(start)))
    print("full-range steps  " + "  |  ".join(f"run {name} (from {start})" for name, _, start in runs)
          + ": key colour shape count count_shape exists where")  # fmt: skip
    for first, last in BLOCKS:
        print(f"{first:4d}-{last:4d}  " + "  |  ".join(f"{name}: {block_mean(lines, start, first, last)}"
                                                      for name, lines, start in runs))  # fmt: skip


if __name__ == "__main__":
    main()
