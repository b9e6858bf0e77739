"""Where between the tower and the point tokens is the count mark lost? The same balanced linear probe as
`../count-view/centre_probe.py`, at each step of the projector, on the point grid's object tokens:

    PYTHONPATH=. python experiments/token-marks/where_lost.py --model /work/runs/bd-1b --scenes 150 [--count-mark first]

- tower, the region's 4 patches side by side: the multi-level features of the s x s patches, concatenated (L*C*4)
- tower, the region's mean: their mean (L*C), what a projector that weighs the 4 patches evenly could keep
- query: the point query (bilinear downsampling of the single-level map, after q_proj_1 and ln_q_1; C)
- injected: the query's attention over its region, after out_proj (C), what the projector's MLP reads
- point tokens: the MLP's output (H), what the LLM sees
Fitted on the object tokens of the first 70% of the scenes, scored on the rest (mark tokens called a mark, other
object tokens called a mark)."""

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "count-view"))
from centre_probe import fit_balanced_probe  # noqa: E402

from tokenpacker.image_processing import ImageProcessor  # noqa: E402
from tokenpacker.loading import load  # noqa: E402
from tokenpacker.synthetic.probe import PROBE_SEED  # noqa: E402
from tokenpacker.synthetic.scenes import SPLITS, random_scene  # noqa: E402
from tokenpacker.synthetic.train import COUNT_MARKS, patch_labels, token_labels  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="assets/default-model")
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--count-mark", choices=list(COUNT_MARKS), default="first")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load(args.model, device="cpu").model
    projector, config = model.model.mm_projector, model.config
    processor, rng = ImageProcessor(config), random.Random(PROBE_SEED)
    s, G = config.scale_factor, config.point_grid
    stages = {name: [] for name in ("tower, the region's 4 patches side by side", "tower, the region's mean", "query",
                                    "injected", "point tokens")}  # fmt: skip
    marks, on_object, scene_of = [], [], []
    for index in range(args.scenes):
        scene = random_scene(rng, **SPLITS["standard"])
        prepared = processor(scene.render())
        labels = token_labels(patch_labels(scene, prepared.views, config.raw_grid, mark=args.count_mark), s)
        features, multi_level = model.model.vision_tower(prepared.pixel_values.to(model.vision_dtype))
        V = features.shape[0]
        regions = projector.regions(multi_level.float())  # (V, G, G, s*s, L*C)
        seen = {}  # the projector's own intermediates, as its forward computes them
        hooks = [projector.ln_q_1.register_forward_hook(lambda m, i, out: seen.__setitem__("query", out)),
                 projector.mlp.register_forward_pre_hook(lambda m, i: seen.__setitem__("injected", i[0]))]  # fmt: skip
        tokens = projector(features, multi_level).tokens  # (V, G*G, H)
        for hook in hooks:
            hook.remove()
        query, injected = seen["query"], seen["injected"]  # (V, G, G, C) each
        for name, x in zip(stages, (regions.flatten(3), regions.mean(3), query, injected, tokens)):
            stages[name].append(x.reshape(V * G * G, -1).float())
        marks.append(labels[:, 2].flatten())
        on_object.append(labels[:, 0].flatten() > 0)
        scene_of.append(torch.full((V * G * G,), index))
    mark, objects, scene_of = torch.cat(marks), torch.cat(on_object), torch.cat(scene_of)
    fit = objects & (scene_of < round(0.7 * args.scenes))
    held = objects & ~(scene_of < round(0.7 * args.scenes))
    print(f"{args.model}, mark {args.count_mark}, {args.scenes} standard scenes; balanced linear probe of the mark "
          f"token among object tokens, fitted on {int(fit.sum())}, scored on {int(held.sum())}")
    for name, parts in stages.items():
        x = torch.cat(parts)
        mean, std = x[fit].mean(0), x[fit].std(0) + 1e-5
        probe = fit_balanced_probe((x[fit] - mean) / std, mark[fit])
        called = probe((x[held] - mean) / std)[:, 0] > 0
        true = mark[held] > 0
        print(f"  {name:<45} width {x.shape[1]:>5}  mark tokens called a mark {called[true].float().mean():.3f}  "
              f"other object tokens {called[~true].float().mean():.3f}")


if __name__ == "__main__":
    main()
