"""Stage 2's teacher-forced means over the full range of canvases, at matched full-range steps: run T (full range
from step 1400) against another run whose full range starts at step 800 (run U).

    python experiments/full-range/compare_logs.py experiments/full-range/run-u-training.log   # -> run-u-vs-t-stage2.txt
"""

import re
import sys

import numpy as np

LINE = re.compile(r"step (\d+)/\d+ .*key word ([\d.]+).*train acc color ([\d.]+) shape ([\d.]+) count ([\d.]+) "
                  r"count_shape ([\d.]+) exists ([\d.]+) where ([\d.]+)")  # fmt: skip
BLOCKS = [(25, 100), (125, 200), (225, 300), (325, 400), (425, 500), (525, 600), (625, 700), (725, 780)]


def stage2_lines(path: str) -> dict[int, list[float]]:
    """step -> [key word's attention mass on target, colour, shape, count, count_shape, exists, where]"""
    found = (LINE.match(line) for line in open(path))
    return {int(m[1]): [float(x) for x in m.groups()[1:]] for m in found if m}


def block_mean(lines: dict, full_range_start: int, first: int, last: int) -> str:
    rows = [lines[full_range_start + k] for k in range(first, last + 1, 25) if full_range_start + k in lines]
    return " ".join(f"{x:.2f}" for x in np.mean(rows, axis=0)) if rows else "-"


def main() -> None:
    run_t = stage2_lines("experiments/where-late-readout/run-t-training.log")
    other = stage2_lines(sys.argv[1])
    print("full-range steps  run T (from 1400): key colour shape count count_shape exists where | run U (from 800)")
    for first, last in BLOCKS:
        print(f"{first:4d}-{last:4d}  T: {block_mean(run_t, 1400, first, last)}  |  U: {block_mean(other, 800, first, last)}")


if __name__ == "__main__":
    main()
