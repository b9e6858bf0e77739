"""Is the scene's count in the mean of the global view's point tokens? A post-hoc probe (no training of the model).

    PYTHONPATH=. python experiments/count-pool/count_pool.py [--model DIR] [--scenes 1000]

A softmax head whose attention is even over the global view's tokens (a query that ignores the keys) returns the
mean of their values: if that mean carries n, counting needs no head to find each object's mark. On freshly generated
standard-split scenes (the probe's seed), probes are fitted on the mean over the global view (the thumbnail, where no
tile border cuts an object) of the point tokens (G x G) and of the tower's multi-level patch features, on 70% of the
scenes, and scored on the other 30%: the number of objects (1-5) and the number of circles (0-5) as classes, by a
linear and a one-hidden-layer MLP probe. The commonest answer's share on the held-out scenes is printed beside them.
"""

import argparse
import random
from collections import Counter

import torch

import importlib.util
from pathlib import Path

from tokenpacker.image_processing import ImageProcessor
from tokenpacker.loading import load
from tokenpacker.synthetic.probe import PROBE_SEED, fit_linear_probe
from tokenpacker.synthetic.scenes import SPLITS, random_scene

_spec = importlib.util.spec_from_file_location("shape_by_size", Path(__file__).parent.parent / "error-anatomy" / "shape_by_size.py")
shape_by_size = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shape_by_size)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="assets/default-model")
    parser.add_argument("--scenes", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    pipeline = load(args.model, device="cpu")
    model = pipeline.model
    processor = ImageProcessor(model.config)
    rng = random.Random(PROBE_SEED)
    pooled = {"tower": [], "point tokens": []}  # per scene: the global view's mean feature, (D,)
    totals, circles, sizes = [], [], []
    for _ in range(args.scenes):
        scene = random_scene(rng, **SPLITS["standard"])
        prepared = processor(scene.render())
        (global_view,) = [view for view in prepared.views if view.kind in ("global", "single")]
        pixels = prepared.pixel_values[global_view.index : global_view.index + 1].to(model.vision_dtype)
        tower_features, multi_level = model.model.vision_tower(pixels)
        tokens = model.model.mm_projector(tower_features, multi_level).tokens  # (1, G * G, D)
        pooled["tower"].append(multi_level[0].float().mean(0))
        pooled["point tokens"].append(tokens[0].float().mean(0))
        totals.append(len(scene.objects))
        circles.append(sum(obj.shape == "circle" for obj in scene.objects))
        sizes.append(max(obj.size for obj in scene.objects) / min(scene.width, scene.height))
    fitted = round(0.7 * args.scenes)
    print(f"{args.model}, standard split, {args.scenes} scenes (probes fitted on {fitted}, scored on the rest); "
          "features: the mean over the global view")
    for target_name, values in (("objects (1-5)", totals), ("circles (0-5)", circles)):
        target = torch.tensor(values)
        commonest = Counter(values[:fitted]).most_common(1)[0][0]
        share = (target[fitted:] == commonest).float().mean().item()
        print(f"  {target_name}: commonest answer on the held-out scenes {share:.3f}")
        for name, rows in pooled.items():
            x = torch.stack(rows)
            for kind, fit in (("linear", fit_linear_probe), ("MLP", shape_by_size.fit_mlp_probe)):
                read = fit(x[:fitted], target[:fitted], 6, steps=1000)
                right = read(x[fitted:]).argmax(-1) == target[fitted:]
                small = torch.tensor(sizes[fitted:]) < 0.15
                print(f"    {name:>12} {kind:>6}: {right.float().mean().item():.3f} "
                      f"(largest object under 15% of the shorter side: {right[small].float().mean().item():.3f}, "
                      f"n={int(small.sum())}; 15% and more: {right[~small].float().mean().item():.3f})")


if __name__ == "__main__":
    main()
