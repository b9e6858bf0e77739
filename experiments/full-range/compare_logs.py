"""Teacher-forced means of stage 2 over the full range: run T (full range from step 1400) vs another run (from 800).

    python experiments/full-range/compare_logs.py experiments/full-range/run-u-training.log
"""
import re, sys
def lines(path):
    out = {}
    for line in open(path):
        m = re.match(r"step (\d+)/\d+ .*key word ([\d.]+).*train acc color ([\d.]+) shape ([\d.]+) count ([\d.]+) count_shape ([\d.]+) exists ([\d.]+) where ([\d.]+)", line)
        if m:
            out[int(m[1])] = [float(x) for x in m.groups()[1:]]
    return out
t = lines("experiments/where-late-readout/run-t-training.log"); u = lines(sys.argv[1])
import numpy as np
print("full-range steps  run T (from 1400): key colour shape count count_shape exists where | run U (from 800)")
for a, b in [(25, 100), (125, 200), (225, 300), (325, 400), (425, 500), (525, 600), (625, 700), (725, 780)]:
    tt = [t[1400 + k] for k in range(a, b + 1, 25) if 1400 + k in t]
    uu = [u[800 + k] for k in range(a, b + 1, 25) if 800 + k in u]
    f = lambda r: " ".join(f"{x:.2f}" for x in np.mean(r, axis=0)) if r else "-"
    print(f"{a:4d}-{b:4d}  T: {f(tt)}  |  U: {f(uu)}")
