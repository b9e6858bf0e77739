"""Do the point tokens mark one centre per object, whatever its size? (why counting over-counts large objects)

    PYTHONPATH=. python experiments/count-view/centre_probe.py --model assets/default-model --scenes 300 [--features tower]
        [--count-mark first]

On freshly generated standard-split scenes (the probe's seed), a linear read-out of "this token's region holds an
object's centre" (`token_labels`' centre channel, what counting's key word is taught to find) is fitted on the
object tokens of 70% of the scenes, the two classes weighted equally (a centre is one token of many), and applied
to the other 30%. For each object in each view: how many of its tokens the read-out calls a centre, by the object's
size in that view's point tokens. An object whose centre is in the view should get exactly 1; a piece of an object
whose centre lies in another tile (cut by a tile border) should get 0; and whether its
most centre-like token is its centre (a read-out that ranks, not thresholds). `--features tower`: the same on the tower's
multi-level patch features (the projector's keys and values; the patch labels' centre channel), sizes still in
point tokens (s patches each), so that the two tables' rows compare. `--count-mark first`: the same for the mark
`train.count_marks` calls "first" (the object's first patch in reading order) in place of the centre (a model trained
with `--count-mark first`); "centre" in the table then means that mark.

Last, how countable the marks are for `How many objects are there?`: count the object tokens (patches; objects by
the labels, as the read-out was fitted on them) of the tiles (or the only view) whose read-out score passes a
threshold, the threshold that counts the fitted scenes best; the held-out scenes' share counted exactly, by the
true n. A linear read-out, one threshold and the objects given, so not a bound on what an LLM could do either way.
"""

import argparse
import random
from collections import defaultdict

import torch
import torch.nn.functional as F

from experiments.objects import object_tokens
from tokenpacker.image_processing import ImageProcessor
from tokenpacker.loading import load
from tokenpacker.synthetic.probe import PROBE_SEED
from tokenpacker.synthetic.scenes import SPLITS, random_scene
from tokenpacker.synthetic.train import COUNT_MARKS, count_marks, patch_labels, token_labels

SIZE_BINS = [("< 1", 1.0), ("1-2", 2.0), ("2-4", 4.0), (">= 4", float("inf"))]  # object side, in point tokens


def fit_balanced_probe(x: torch.Tensor, y: torch.Tensor, steps: int = 400) -> torch.nn.Linear:
    """Logistic regression of y (0/1) on standardised x, each class weighing half of the loss."""
    probe = torch.nn.Linear(x.shape[1], 1)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    weight = torch.where(y > 0, 0.5 / y.float().mean(), 0.5 / (1 - y.float().mean()))
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(probe(x)[:, 0], y.float(), weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return probe


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="assets/default-model")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--features", choices=["point-tokens", "tower"], default="point-tokens")
    parser.add_argument("--count-mark", choices=list(COUNT_MARKS), default="centre")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipeline = load(args.model, device="cpu")
    model, config = pipeline.model, pipeline.model.config
    processor = ImageProcessor(config)
    grid = config.raw_grid
    scale = config.scale_factor
    rng = random.Random(PROBE_SEED)
    local, truths = [], []  # per scene: (N,) bool, the tiles' (or the only view's) tokens or patches; its n objects
    features, centres, on_object, objects = [], [], [], []  # per scene: (N, width) tokens or patches, (N,) centre
    # labels, (N,) bool: an object's, rows (view kind, object side in point tokens, centre in view, its indices)
    for _ in range(args.scenes):
        scene = random_scene(rng, **SPLITS["standard"])
        prepared = processor(scene.render())
        labels = patch_labels(scene, prepared.views, grid, mark=args.count_mark)
        pixel_values = prepared.pixel_values.to(model.vision_device, model.vision_dtype)
        tower_features, multi_level = model.model.vision_tower(pixel_values)
        if args.features == "tower":  # (V, R*R, D) and (V, 4, R, R)
            values, dense, per_token = multi_level.float(), labels, scale
        else:  # (V, G*G, H) and (V, 4, G, G)
            values = model.model.mm_projector(tower_features, multi_level).tokens.float()
            dense, per_token = token_labels(labels, scale), 1
        G = dense.shape[-1]
        local.append(torch.tensor([view.kind != "global" for view in prepared.views]).repeat_interleave(G * G))
        truths.append(len(scene.objects))
        features.append(values.flatten(0, 1))
        centres.append(dense[:, 2].flatten())
        rows = []
        for view in prepared.views:
            marked = {index for index, *_ in count_marks(scene, view, grid, args.count_mark)}
            for index, obj in enumerate(scene.objects):
                mask = object_tokens(obj, view, dense[view.index], G)
                if not mask.any():
                    continue
                centre_here = index in marked
                size = obj.size / view.scale_x / (view.size / G) / per_token  # in point tokens
                rows.append((view.kind, size, centre_here, view.index * G * G + mask.flatten().nonzero()[:, 0]))
        objects.append(rows)
        on_object.append(dense[:, 0].flatten() > 0)
    fitted = round(0.7 * args.scenes)
    fit = torch.cat(on_object[:fitted])
    x_fit, y_fit = torch.cat(features[:fitted])[fit], torch.cat(centres[:fitted])[fit]
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-5
    probe = fit_balanced_probe((x_fit - mean) / std, y_fit)
    table = defaultdict(list)  # (view kind, size bin, centre in view) -> [tokens called a centre, per object]
    hits = defaultdict(int)
    ranked_first = defaultdict(list)  # (view kind, size bin) -> [the top-scoring token of the object is its centre]
    scores = [probe((f - mean) / std)[:, 0] for f in features]  # per scene: (N,) the read-out's score
    for score, scene_centres, rows in zip(scores[fitted:], centres[fitted:], objects[fitted:]):
        called = score > 0
        for kind, size, centre_here, index in rows:
            name = next(n for n, top in SIZE_BINS if size < top)
            table[kind, name, centre_here].append(int(called[index].sum()))
            true = scene_centres[index] > 0
            if centre_here and true.any():  # is the object's most centre-like token (patch) its centre?
                ranked_first[kind, name].append(bool(true[score[index].argmax()]))
            hits["centre tokens"] += int(true.sum())
            hits["centre tokens called"] += int((called[index] & true).sum())
            hits["other object tokens"] += int((~true).sum())
            hits["other object tokens called"] += int((called[index] & ~true).sum())
    unit = "patches" if args.features == "tower" else "tokens"
    print(f"{args.model}, standard split, {args.scenes} scenes, {args.features}, mark {args.count_mark} (probe fitted on {fitted} scenes, "
          "scored on the rest)")
    print(f"  centre {unit} called a centre {hits['centre tokens called'] / max(1, hits['centre tokens']):.3f} of "
          f"{hits['centre tokens']}; other object {unit} called a centre "
          f"{hits['other object tokens called'] / max(1, hits['other object tokens']):.3f} of {hits['other object tokens']}")
    print(f"  {unit} of one object the read-out calls a centre, by the object's side in the view's point tokens")
    print(f"  {'view':<7} {'size':>5} {'centre in view':>14} {'objects':>7} {'none':>6} {'one':>6} {'2+':>6} {'mean':>6} {'top is centre':>13}")
    for kind in ("tile", "global", "single"):
        for centre_here in (True, False):
            for name, _ in SIZE_BINS:
                calls = table.get((kind, name, centre_here))
                if not calls:
                    continue
                share = lambda test: sum(map(test, calls)) / len(calls)
                print(f"  {kind:<7} {name:>5} {'yes' if centre_here else 'no (cut)':>14} {len(calls):>7} "
                      f"{share(lambda c: c == 0):>6.2f} {share(lambda c: c == 1):>6.2f} {share(lambda c: c >= 2):>6.2f} "
                      f"{sum(calls) / len(calls):>6.2f} " + (f"{sum(top) / len(top):>13.2f}"
                      if centre_here and (top := ranked_first[kind, name]) else f"{'':>13}"))
    counted_on = [local[i] & on_object[i] for i in range(args.scenes)]  # the tiles' object tokens
    counted = lambda threshold, scenes: [int((scores[i][counted_on[i]] > threshold).sum()) for i in scenes]
    fit_scenes, held_scenes = range(fitted), range(fitted, args.scenes)
    candidates = torch.cat([scores[i][counted_on[i]] for i in fit_scenes]).quantile(torch.linspace(0.0, 0.999, 400))
    exact = lambda threshold, scenes: sum(c == truths[i] for c, i in zip(counted(threshold, scenes), scenes))
    threshold = max(candidates.tolist(), key=lambda t: exact(t, fit_scenes))
    by_n = defaultdict(list)
    for c, i in zip(counted(threshold, held_scenes), held_scenes):
        by_n[truths[i]].append(c - truths[i])
    print(f"  counting the object {unit} of the tiles (or the only view) that pass the read-out's best threshold on the fitted "
          f"scenes ({threshold:.2f}), held-out scenes: exact {exact(threshold, held_scenes) / len(held_scenes):.3f}")
    print(f"  {'n':>3} {'scenes':>6} {'exact':>6} {'one off':>7} {'mean error':>10}")
    for n in sorted(by_n):
        errors = by_n[n]
        print(f"  {n:>3} {len(errors):>6} {sum(e == 0 for e in errors) / len(errors):>6.2f} "
              f"{sum(abs(e) == 1 for e in errors) / len(errors):>7.2f} {sum(errors) / len(errors):>+10.2f}")


if __name__ == "__main__":
    main()
