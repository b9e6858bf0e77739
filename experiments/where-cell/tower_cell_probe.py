"""Linear 3x3-cell probe on the shipped tower's features of the global/only view (per CLIP patch): does the tower keep
absolute position? PYTHONPATH=. python experiments/where-cell/tower_cell_probe.py (reuses cell_probe.py's set-up)."""
import random, numpy as np, torch, torch.nn.functional as F, sys
sys.argv = ["x", "0", "0"]
exec(open("experiments/where-cell/cell_probe.py").read().split("def batch")[0])  # setup + cell_targets
from tokenpacker.synthetic.scenes import SPLITS, random_scene
R = config.raw_grid
def cells_raw(scene, views):
    out = torch.full((len(views), R * R), -100)
    for view in views:
        if len(views) > 1 and view.kind != "global": continue
        c = (np.arange(R) + 0.5) * view.size / R
        xs, ys = view.to_image(c, c)
        col = np.where((xs >= 0) & (xs < scene.width), np.minimum(2, (3 * xs / scene.width).astype(int)), -1)
        row = np.where((ys >= 0) & (ys < scene.height), np.minimum(2, (3 * ys / scene.height).astype(int)), -1)
        out[view.index] = torch.from_numpy(np.where((row[:, None] >= 0) & (col[None, :] >= 0), 3 * row[:, None] + col[None, :], -100).reshape(-1))
    return out
for name, pick in (("tower multi-level", lambda f, m: m), ("tower last features", lambda f, m: f)):
    head = None; opt = None; hist = []
    for step in range(150):
        px, cs = [], []
        for _ in range(6):
            scene = random_scene(rng, **(T.WARMUP_SPLIT if rng.random() < 0.5 else SPLITS["standard"]))
            p = make.processor(scene.render()); px.append(p.pixel_values); cs.append(cells_raw(scene, p.views))
        with torch.no_grad():
            f, m = model.model.vision_tower(torch.cat(px))
        x = pick(f, m); x = x[:, -R * R:] if x.shape[1] != R * R else x
        if head is None:
            head = torch.nn.Linear(x.shape[-1], 9); opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
        y = torch.cat(cs).reshape(-1); keep = y >= 0
        logits = head(x.flatten(0, 1)[keep]); loss = F.cross_entropy(logits, y[keep])
        hist.append((logits.argmax(-1) == y[keep]).float().mean().item())
        opt.zero_grad(); loss.backward(); opt.step()
    print(name, x.shape, "cell acc last 25 steps", round(float(np.mean(hist[-25:])), 3), flush=True)
