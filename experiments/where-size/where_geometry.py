"""Where the `where` answers go wrong, by the asked object's geometry: its centre's distance to the nearest 3 x 3 cell
line (in cells), its size (of the shorter side), the canvas' aspect ratio and long side. Reads an answers file of
`experiments/branches/answers.py` (standard split) and regenerates its scenes.

    PYTHONPATH=. python experiments/where-size/where_geometry.py ANSWERS.json"""
import json, sys, numpy as np
from tokenpacker.synthetic.evaluate import evaluation_questions
recs = json.load(open(sys.argv[1]))["records"]
rows = []
for (scene, kind, q, exp, target), r in zip(evaluation_questions("standard", len(recs)), recs):
    assert r["question"] == q
    if kind != "where": continue
    w = q.rstrip("?").split(); col, shp = w[-2], w[-1]
    o = [o for o in scene.objects if o.color == col and o.shape == shp][0]
    cx, cy = o.cx / scene.width, o.cy / scene.height
    # distance of centre to the nearest cell line, in cell units
    d = min(abs(cx*3 - round(cx*3)) if 0 < round(cx*3) < 3 else 1, abs(cy*3 - round(cy*3)) if 0 < round(cy*3) < 3 else 1)
    size = o.size / min(scene.width, scene.height)
    aspect = max(scene.width, scene.height) / min(scene.width, scene.height)
    twin = any(x.color == col for x in scene.objects if x is not o)  # another object of the asked colour
    rows.append((r["answer"] == r["expected"], d, size, aspect, max(scene.width, scene.height), twin))
a = np.array(rows, dtype=float)
def show(name, col, edges):
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (a[:, col] >= lo) & (a[:, col] < hi)
        print(f"{name} [{lo},{hi}): {a[m,0].mean():.2f} of {m.sum()}")
show("dist to cell line (cells)", 1, [0, .05, .1, .2, .3, 1.01])
show("size (of shorter side)", 2, [0, .05, .1, .2, .41])
show("aspect", 3, [1, 1.3, 2, 4.1])
show("long side px", 4, [0, 400, 700, 1000, 1400])
small = a[:, 2] < 0.05
for twin in (0, 1):
    m = small & (a[:, 5] == twin)
    print(f"size < 0.05, {'another' if twin else 'no other'} object of its colour: {a[m, 0].mean():.2f} of {m.sum()}")
