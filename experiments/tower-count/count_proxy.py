"""Can the tower carry the scene's object counts in every patch of the global view (so that counting's key word
could read n from any global-view token, however its attention falls)? The shipped tower, fine-tuned on the
global view (or the only view) of stage 1's scenes with a linear read-out of its multi-level features per patch:
the number of objects and of each shape (0-5 each, cross-entropy at every patch).

    PYTHONPATH=. python experiments/tower-count/count_proxy.py bd 1500     # `fresh` instead of `bd`: re-initialised

"vote": the patches' mean probabilities' argmax per view; "patch": per patch; both on batches before training on them."""
import random, time, sys, torch, numpy as np, torch.nn.functional as F
from pathlib import Path
from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import SPLITS, SHAPES, random_scene
torch.manual_seed(0); torch.set_num_threads(2)
p = load(Path("assets/default-model"), device="cpu")
model, tok = p.model, p.tokenizer
make = T.ExampleMaker(tok, model.config, count_mark="first")
tower = model.model.vision_tower
if len(sys.argv) > 1 and sys.argv[1] == "fresh":
    for m in tower.modules():
        if hasattr(m, "reset_parameters"): m.reset_parameters()
width = model.config.vision_config.hidden_size * 4
head = torch.nn.Linear(width, 4 * 6)
params = list(tower.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
rng = random.Random(7)
def batch(n=6):
    views, targets = [], []
    for _ in range(n):
        split = T.WARMUP_SPLIT if rng.random() < 0.5 else SPLITS["standard"]
        scene = random_scene(rng, **split)
        prep = make.processor(scene.render())
        v = prep.pixel_values[-1:]  # the global view (or the only one)
        shapes = [o.shape for o in scene.objects]
        t = [len(shapes)] + [shapes.count(s) for s in SHAPES]
        views.append(v); targets.append(t)
    return torch.cat(views), torch.tensor(targets)
hist = []; start = time.time()
for step in range(int(sys.argv[2]) if len(sys.argv) > 2 else 400):
    v, t = batch()
    _, ml = tower(v)  # (B, R*R, width)
    logits = head(ml).view(ml.shape[0], ml.shape[1], 4, 6)
    tgt = t[:, None, :].expand(-1, ml.shape[1], -1)
    loss = F.cross_entropy(logits.reshape(-1, 6).float(), tgt.reshape(-1))
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0)
    for g in opt.param_groups: g["lr"] = 1e-3 * min(1, (step + 1) / 50)
    opt.step()
    with torch.no_grad():
        vote = logits.detach().float().softmax(-1).mean(1).argmax(-1)  # (B, 4)
        per_patch = (logits.detach().argmax(-1) == tgt).float().mean((0, 1))
        hist.append([loss.item(), *(vote == t).float().mean(0).tolist(), *per_patch.tolist()])
    if (step + 1) % 25 == 0:
        h = np.mean(hist[-25:], axis=0)
        print(f"step {step+1} loss {h[0]:.3f} vote total/c/s/t {h[1]:.2f} {h[2]:.2f} {h[3]:.2f} {h[4]:.2f}  patch {h[5]:.2f} {h[6]:.2f} {h[7]:.2f} {h[8]:.2f} {time.time()-start:.0f}s", flush=True)
