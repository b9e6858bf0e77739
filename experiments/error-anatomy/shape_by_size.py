"""Do the tower and the point tokens know a small object's shape and colour? Per-object linear probes by size.

    PYTHONPATH=. python experiments/error-anatomy/shape_by_size.py [--model DIR] [--scenes 300] [--per-bin] [--mlp]

On freshly generated standard-split scenes (the probe's seed), linear read-outs of shape and of colour are fitted on
the object patches (tokens) of 70% of the scenes and applied to the other 30%. An object's answer in a view is the
argmax of its patches' (tokens') summed log-probabilities, as a retrieval that gathers the object would read it;
its size is its side in that view's pixels (a view is 336 px, a patch 14, a point token 28). An object counts once
per view it shows in (each of its tiles and the thumbnail). `--per-bin`: a probe per size bin, fitted on that bin's
objects only (the pooled fit's rows are mostly large objects' patches); `--mlp`: the probes are a one-hidden-layer MLP
(256 units) instead of linear, to ask whether the feature is there but not linearly.
"""

import argparse
import random
from collections import defaultdict

import torch
import torch.nn.functional as F

from experiments.objects import bin_name, bin_names, object_tokens
from tokenpacker.image_processing import ImageProcessor
from tokenpacker.loading import load
from tokenpacker.synthetic.probe import PROBE_SEED, fit_linear_probe
from tokenpacker.synthetic.scenes import COLORS, SHAPES, SPLITS, random_scene
from tokenpacker.synthetic.train import patch_labels, token_labels

PIXEL_BINS = [8, 16, 32, 64, 10_000]  # the object's side in the view's pixels


def fit_mlp_probe(features: torch.Tensor, targets: torch.Tensor, classes: int, steps: int = 300, hidden: int = 256):
    """`fit_linear_probe`'s contract with one hidden GELU layer (seeded; weight decay 1e-2)."""
    mean, std = features.mean(0), features.std(0) + 1e-5
    generator = torch.Generator().manual_seed(0)
    first = (torch.randn(features.shape[1], hidden, generator=generator) / features.shape[1] ** 0.5).requires_grad_()
    second = torch.zeros(hidden, classes, requires_grad=True)
    biases = [torch.zeros(hidden, requires_grad=True), torch.zeros(classes, requires_grad=True)]
    params = [first, second, *biases]
    forward = lambda x: F.gelu(((x - mean) / std) @ first + biases[0]) @ second + biases[1]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(forward(features), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return lambda new: forward(new).detach()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="assets/default-model")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--per-bin", action="store_true", help="a probe per size bin, fitted on that bin's objects")
    parser.add_argument("--mlp", action="store_true", help="one-hidden-layer MLP probes instead of linear ones")
    args = parser.parse_args()
    fit_probe = fit_mlp_probe if args.mlp else fit_linear_probe
    torch.manual_seed(0)
    pipeline = load(args.model, device="cpu")
    model, config = pipeline.model, pipeline.model.config
    processor, grid, scale = ImageProcessor(config), config.raw_grid, config.scale_factor
    rng = random.Random(PROBE_SEED)
    fitted = round(0.7 * args.scenes)
    names = ("tower", "point tokens")
    fit_rows = {name: ([], [], [], []) for name in names}  # features, colour, shape, size bin of the fitted object rows
    held = {name: [] for name in names}  # per held-out object and view: (side in view px, features (K, D), colour, shape)
    for index in range(args.scenes):
        scene = random_scene(rng, **SPLITS["standard"])
        prepared = processor(scene.render())
        labels = patch_labels(scene, prepared.views, grid)  # (V, 4, R, R)
        tower_features, multi_level = model.model.vision_tower(prepared.pixel_values.to(model.vision_dtype))
        tokens = model.model.mm_projector(tower_features, multi_level).tokens
        for name, values, dense in (("tower", multi_level, labels), ("point tokens", tokens, token_labels(labels, scale))):
            side = dense.shape[-1]
            for view in prepared.views:
                features = values[view.index].float()  # (side * side, D)
                for obj in scene.objects:
                    mask = object_tokens(obj, view, dense[view.index], side).flatten()
                    if not mask.any():
                        continue
                    colour, shape = 1 + list(COLORS).index(obj.color), list(SHAPES).index(obj.shape)
                    if index < fitted:
                        fit_rows[name][0].append(features[mask])
                        fit_rows[name][1].append(torch.full((int(mask.sum()),), colour))
                        fit_rows[name][2].append(torch.full((int(mask.sum()),), shape))
                        fit_rows[name][3].extend([bin_name(obj.size / view.scale_x, PIXEL_BINS)] * int(mask.sum()))
                    else:
                        held[name].append((obj.size / view.scale_x, features[mask], colour, shape))
    kind = ("MLP" if args.mlp else "linear") + (" probes per size bin" if args.per_bin else " probes")
    print(f"{args.model}, standard split, {args.scenes} scenes ({kind} fitted on {fitted}); an object's answer in a "
          "view: argmax of its patches' (tokens') summed log-probabilities")
    for name in names:
        *columns, bins = fit_rows[name]
        x, colours, shapes = (torch.cat(column) for column in columns)
        groups = sorted(set(bins)) if args.per_bin else [None]
        reads = {}
        for group in groups:
            rows = torch.tensor([b == group for b in bins]) if group else torch.ones(len(bins), dtype=torch.bool)
            reads[group] = (fit_probe(x[rows], colours[rows], 1 + len(COLORS)), fit_probe(x[rows], shapes[rows], len(SHAPES)))
        per_bin = defaultdict(lambda: ([], []))  # size bin -> (colour right, shape right), per object and view
        for side, features, colour, shape in held[name]:
            label = bin_name(side, PIXEL_BINS)
            read_colour, read_shape = reads[label if args.per_bin else None]
            colour_right = read_colour(features).log_softmax(-1).sum(0).argmax().item() == colour
            shape_right = read_shape(features).log_softmax(-1).sum(0).argmax().item() == shape
            per_bin[label][0].append(colour_right)
            per_bin[label][1].append(shape_right)
        print(f"  {name}: by the object's side in the view's pixels")
        print(f"    {'side':>6} {'objects':>7} {'colour':>7} {'shape':>7}")
        for label in bin_names(PIXEL_BINS):
            colour_right, shape_right = per_bin.get(label, ([], []))
            if colour_right:
                print(f"    {label:>6} {len(colour_right):>7} {sum(colour_right) / len(colour_right):>7.3f} "
                      f"{sum(shape_right) / len(shape_right):>7.3f}")


if __name__ == "__main__":
    main()
