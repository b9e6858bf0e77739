"""What reaches the LLM: linear probes for colour, shape and position on a checkpoint's vision features.

    python -m tokenpacker.synthetic.probe [--model DIR] [--split standard|small|warmup] [--scenes N] [--random-tower]

On the object patches of freshly generated scenes, a linear classifier (fitted on the patches of 70% of the
scenes, scored on the other 30%: no object is in both) reads the object's colour and its shape from the tower's multi-level CLIP features (the
projector's keys and values) and from the projector's point tokens (what the LLM sees). A question can only
be answered as well as what it needs is there: `What color is the triangle?` needs the shape to find the
object and the colour to answer. Shape is also scored on the objects' boundary patches alone, where the
outline is in view. Position: the 3 x 3 cell of the image under the object patches / tokens of the global view
(or the only view), what `Where is the red circle?` needs (`token_labels`: a token takes the cell of its
region's object-centre patch, else of its first patch).
"""

import argparse
import random

import torch
import torch.nn.functional as F

from ..loading import load
from ..modeling import TokenPackerForCausalLM
from .scenes import SPLITS
from .train import WARMUP_SPLIT, ExampleMaker, boundary, token_labels

PROBE_SEED = 4321  # scenes for probing; neither the training nor the evaluation seed


def fit_linear_probe(features: torch.Tensor, targets: torch.Tensor, classes: int, steps: int = 300):
    """A softmax-regression probe fitted on (N, D) features and (N,) integer targets; -> a function from (M, D)
    features to (M, classes) logits (features standardised with the fitted rows' statistics)."""
    mean, std = features.mean(0), features.std(0) + 1e-5
    x = (features - mean) / std
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(x @ weight + bias, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    weight, bias = weight.detach(), bias.detach()
    return lambda new: ((new - mean) / std) @ weight + bias


def linear_probe_accuracy(features: torch.Tensor, targets: torch.Tensor, held_out: torch.Tensor, classes: int,
                          steps: int = 300) -> float:  # fmt: skip
    """Accuracy on the `held_out` rows of a softmax-regression probe fitted on the others: (N, D) features,
    (N,) integer targets, (N,) bool."""
    fit = ~held_out
    logits = fit_linear_probe(features[fit], targets[fit], classes, steps)
    with torch.no_grad():
        return (logits(features[held_out]).argmax(-1) == targets[held_out]).float().mean().item()


@torch.no_grad()
def probe(pipeline, split: dict, scenes: int = 60, seed: int = PROBE_SEED) -> dict[str, dict[str, float]]:
    """{'tower': {...}, 'point tokens': {...}}, each {'colour', 'shape', 'shape at boundaries', 'object cell'} accuracy."""
    model = pipeline.model
    make = ExampleMaker(pipeline.tokenizer, model.config)
    rng = random.Random(seed)
    scale = model.config.scale_factor
    collected = {"tower": ([], []), "point tokens": ([], [])}
    for scene in range(scenes):
        pixel_values, labels = make.views_and_labels(rng, split)  # labels: (V, 4, R, R)
        pixel_values = pixel_values.to(model.vision_device, model.vision_dtype)
        features, multi_level = model.model.vision_tower(pixel_values)
        tokens = model.model.mm_projector(features, multi_level).tokens  # (V, G*G, H)
        point_labels = token_labels(labels, scale)  # a token shows what any patch of its region shows
        for name, values, dense in (("tower", multi_level, labels), ("point tokens", tokens, point_labels)):
            collected[name][0].append(values.flatten(0, 1).float().cpu())
            held_out = torch.full_like(dense[:, 0], scene >= 0.7 * scenes)  # the last 30% of the scenes
            columns = (dense[:, 0], dense[:, 1], boundary(dense[:, 0]), dense[:, 3], held_out)
            collected[name][1].append(torch.stack(columns, -1).flatten(0, 2))
    report = {}
    for name, (values, dense) in collected.items():
        x, y = torch.cat(values), torch.cat(dense)  # y: (N, 5) colour, shape, boundary, cell, held out
        objects, edges, held_out = y[:, 0] > 0, y[:, 2] > 0, y[:, 4] > 0
        placed = objects & (y[:, 3] >= 0)
        colors, shapes = int(y[:, 0].max()) + 1, int(y[:, 1].max()) + 1
        report[name] = {
            "colour": linear_probe_accuracy(x[objects], y[objects, 0], held_out[objects], colors),
            "shape": linear_probe_accuracy(x[objects], y[objects, 1], held_out[objects], shapes),
            "shape at boundaries": linear_probe_accuracy(x[edges], y[edges, 1], held_out[edges], shapes),
            "object cell": linear_probe_accuracy(x[placed], y[placed, 3], held_out[placed], 9),
            "object patches": int(objects.sum()),
        }
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--split", choices=["standard", "small", "warmup"], default="standard")
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--random-tower", action="store_true",
                        help="baseline: the same probes with the vision tower freshly initialised (seeded)")  # fmt: skip
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pipeline = load(args.model, device="cpu")
    if args.random_tower:
        fresh = TokenPackerForCausalLM(pipeline.model.config)
        pipeline.model.model.vision_tower.load_state_dict(fresh.model.vision_tower.state_dict())
    split = WARMUP_SPLIT if args.split == "warmup" else SPLITS[args.split]
    print("chance: colour 1/6, shape 1/3, cell about 1/9")
    for name, scores in probe(pipeline, split, args.scenes).items():
        counts = scores.pop("object patches")
        print(f"{name}: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()) + f"  ({counts} object patches)")


if __name__ == "__main__":
    main()
