"""Shared by experiment scripts: which patches (tokens) of a view are one object's, and size bins' names."""

import torch

from tokenpacker.synthetic.scenes import COLORS, SHAPES


def object_tokens(obj, view, labels: torch.Tensor, grid: int) -> torch.Tensor:
    """(grid, grid) bool: the view's tokens (or patches) inside the object's box whose labels (4, grid, grid) show
    its colour and shape."""
    step = view.size / grid
    (u0, v0), (u1, v1) = view.from_image(*obj.box[:2]), view.from_image(*obj.box[2:])
    in_box = torch.zeros(grid, grid, dtype=torch.bool)
    c0, c1 = max(0, int(u0 // step)), min(grid - 1, int(u1 // step))
    r0, r1 = max(0, int(v0 // step)), min(grid - 1, int(v1 // step))
    if c0 <= c1 and r0 <= r1:
        in_box[r0 : r1 + 1, c0 : c1 + 1] = True
    same = (labels[0] == 1 + list(COLORS).index(obj.color)) & (labels[1] == 1 + list(SHAPES).index(obj.shape))
    return in_box & same


def bin_names(bins: list, fmt: str = "") -> list[str]:
    """Names of the bins [.., b0), [b0, b1), .., [b_-2, ..) given by their upper bounds (the last one unbounded)."""
    return [f"< {b:{fmt}}" for b in bins[:-1]] + [f">= {bins[-2]:{fmt}}"]


def bin_name(value: float, bins: list, fmt: str = "") -> str:
    """The name (`bin_names`) of the bin that holds `value`."""
    return bin_names(bins, fmt)[next(i for i, b in enumerate(bins) if value < b)]
