"""Is the scene's count in the mean of the global view's point tokens? A probe, after an optional fine-tune.

    PYTHONPATH=. python experiments/count-pool/count_pool.py [--model DIR] [--scenes 1000] [--train-steps N]

A softmax head whose attention is even over the global view's tokens (a query that ignores the keys) returns the
mean of their values: if that mean carries n, counting needs no head to find each object's mark. On freshly generated
standard-split scenes (the probe's seed), probes are fitted on the mean over the global view (the thumbnail, where no
tile border cuts an object; a 1 x 1 partition's one tile) of the point tokens (G x G) and of the tower's multi-level
patch features, on 70% of the scenes, and scored on the other 30%: the number of objects (1-5) and the number of
circles (0-5) as classes, by a linear and a one-hidden-layer MLP probe. The commonest answer's share on the held-out
scenes is printed beside them.

`--train-steps N` first fine-tunes the tower and the projector for N steps with one target only: a linear read-out
of the global view's mean point token must give the number of objects (cross-entropy; batches of 6 global views,
half of stage 2's small canvases, half the standard split, from a seed of their own; AdamW 1e-3 after 50 warm-up
steps). It asks whether the model can learn to carry n in the mean at all, not whether it keeps what else it knows.
"""

import argparse
import importlib.util
import random
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenpacker.image_processing import ImageProcessor
from tokenpacker.loading import load
from tokenpacker.synthetic.probe import PROBE_SEED, fit_linear_probe
from tokenpacker.synthetic.scenes import SPLITS, random_scene
from tokenpacker.synthetic.train import WARMUP_SPLIT

_spec = importlib.util.spec_from_file_location("shape_by_size", Path(__file__).parent.parent / "error-anatomy" / "shape_by_size.py")
shape_by_size = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shape_by_size)

TRAIN_SEED = 20267001  # the fine-tune's scenes; not the probe's


def global_view_means(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) global views -> the mean tower multi-level feature (B, 4C) and mean point token (B, H)."""
    tower_features, multi_level = model.model.vision_tower(pixel_values.to(model.vision_dtype))
    tokens = model.model.mm_projector(tower_features, multi_level).tokens  # (B, G * G, H)
    return multi_level.float().mean(1), tokens.float().mean(1)


def fine_tune(model, processor, steps: int) -> torch.nn.Linear:
    vision = model.model.vision_tower, model.model.mm_projector
    params = [p for module in vision for p in module.parameters()]
    head = torch.nn.Linear(model.config.text_config.hidden_size, 6)
    optimizer = torch.optim.AdamW(params + list(head.parameters()), lr=1e-3, weight_decay=0.01)
    rng, history, start = random.Random(TRAIN_SEED), [], time.time()
    for module in vision:
        module.train().requires_grad_(True)  # `load` hands them back frozen
    for step in range(steps):
        views, counts = [], []
        for _ in range(6):
            scene = random_scene(rng, **(WARMUP_SPLIT if rng.random() < 0.5 else SPLITS["standard"]))
            views.append(processor(scene.render()).pixel_values[-1:])
            counts.append(len(scene.objects))
        with torch.enable_grad():
            logits = head(global_view_means(model, torch.cat(views))[1])
            loss = F.cross_entropy(logits, torch.tensor(counts))
            optimizer.zero_grad()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 50)
        optimizer.step()
        history.append((loss.item(), (logits.argmax(-1) == torch.tensor(counts)).float().mean().item()))
        if (step + 1) % 50 == 0:
            recent = history[-50:]
            print(f"fine-tune step {step + 1}/{steps}  loss {sum(h[0] for h in recent) / 50:.3f}  "
                  f"count acc {sum(h[1] for h in recent) / 50:.3f}  {time.time() - start:.0f}s", flush=True)
    for module in vision:
        module.eval().requires_grad_(False)
    return head


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="assets/default-model")
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--train-steps", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load(args.model, device="cpu").model
    processor = ImageProcessor(model.config)
    head = fine_tune(model, processor, args.train_steps) if args.train_steps else None
    rng = random.Random(PROBE_SEED)
    pooled = {"tower": [], "point tokens": []}  # per scene: the global view's mean feature, (D,)
    totals, circles, sizes = [], [], []
    for _ in range(args.scenes):
        scene = random_scene(rng, **SPLITS["standard"])
        global_view = processor(scene.render()).pixel_values[-1:]  # the thumbnail; a 1 x 1 partition's one tile
        for name, mean in zip(pooled, global_view_means(model, global_view)):
            pooled[name].append(mean[0])
        totals.append(len(scene.objects))
        circles.append(sum(obj.shape == "circle" for obj in scene.objects))
        sizes.append(max(obj.size for obj in scene.objects) / min(scene.width, scene.height))
    fitted = round(0.7 * args.scenes)
    small = torch.tensor(sizes[fitted:]) < 0.15
    print(f"{args.model}{f' + {args.train_steps} fine-tune steps' if head else ''}, standard split, {args.scenes} "
          f"scenes (probes fitted on {fitted}, scored on the rest); features: the mean over the global view")

    def report(label: str, right: torch.Tensor) -> None:
        print(f"    {label:>19}: {right.float().mean().item():.3f} (largest object under 15% of the shorter side: "
              f"{right[small].float().mean().item():.3f}, n={int(small.sum())}; 15% and more: "
              f"{right[~small].float().mean().item():.3f})")

    for target_name, values in (("objects (1-5)", totals), ("circles (0-5)", circles)):
        target = torch.tensor(values)
        commonest = Counter(values[:fitted]).most_common(1)[0][0]
        print(f"  {target_name}: commonest answer on the held-out scenes {(target[fitted:] == commonest).float().mean().item():.3f}")
        if head is not None and target_name.startswith("objects"):
            report("fine-tune's head", head(torch.stack(pooled["point tokens"][fitted:])).argmax(-1) == target[fitted:])
        for name, rows in pooled.items():
            x = torch.stack(rows)
            for kind, fit in (("linear", fit_linear_probe), ("MLP", shape_by_size.fit_mlp_probe)):
                read = fit(x[:fitted], target[:fitted], 6, steps=1000)
                report(f"{name} {kind}", read(x[fitted:]).argmax(-1) == target[fitted:])


if __name__ == "__main__":
    main()
