"""TokenPacker-HD dynamic partition: which rows x cols grid of views an image is cut into.

Pure geometry, no tensors of pixels. Scores are computed with the same float32 torch arithmetic as the
released code, so ties and near-ties break exactly as there (first candidate wins).
"""

from dataclasses import dataclass

import torch

_GRIDS_9 = [
    (1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2), (1, 4), (4, 1), (1, 5), (5, 1), (1, 6), (6, 1),
    (2, 3), (3, 2), (1, 7), (7, 1), (4, 2), (2, 4), (1, 8), (8, 1), (3, 3), (1, 9), (9, 1),
]  # fmt: skip
_GRIDS_16 = _GRIDS_9 + [
    (2, 5), (5, 2), (2, 6), (6, 2), (3, 4), (4, 3), (2, 7), (7, 2), (3, 5), (5, 3), (2, 8), (8, 2), (4, 4),
]  # fmt: skip
# As published, duplicates (4, 6) and (6, 4) included: they can never win (the first copy does).
_GRIDS_25 = _GRIDS_16 + [
    (3, 6), (6, 3), (2, 9), (9, 2), (4, 5), (5, 4), (2, 10), (10, 2), (3, 7), (7, 3), (11, 2), (2, 11),
    (4, 6), (6, 4), (12, 2), (2, 12), (3, 8), (8, 3), (4, 6), (6, 4), (5, 5),
]  # fmt: skip
CANDIDATE_GRIDS = {9: _GRIDS_9, 16: _GRIDS_16, 25: _GRIDS_25}


@dataclass(frozen=True)
class GridCandidate:
    rows: int
    cols: int
    fill: float  # share of the canvas the resized image covers
    iou: float  # IoU of the canvas with the 1.4x-enlarged image box
    score: float  # fill + 0.1 * iou
    allowed: bool  # within the tile limit of the request


@dataclass(frozen=True)
class Partition:
    """The chosen grid and how the image sits on its canvas (all sizes in pixels, (height, width))."""

    rows: int
    cols: int
    image_size: tuple[int, int]  # original (h, w)
    view_size: int  # side of one view (336)
    resized_size: tuple[int, int]  # (h', w') of the image pasted top-left on the canvas
    thumbnail_size: tuple[int, int] | None  # (h'', w'') of the canvas pasted top-left on the thumbnail
    candidates: tuple[GridCandidate, ...]

    @property
    def num_tiles(self) -> int:
        return self.rows * self.cols

    @property
    def has_thumbnail(self) -> bool:
        return self.num_tiles > 1

    @property
    def canvas_size(self) -> tuple[int, int]:
        return self.rows * self.view_size, self.cols * self.view_size


def score_grids(height: int, width: int, patch_num: int = 9, view_size: int = 336) -> list[tuple[int, int, float, float, float]]:
    """(rows, cols, fill, iou, score) for every candidate grid of `patch_num`, in published order."""
    if patch_num not in CANDIDATE_GRIDS:
        raise ValueError(f"patch_num must be one of {sorted(CANDIDATE_GRIDS)}, got {patch_num}")
    grids = CANDIDATE_GRIDS[patch_num]
    boxes = torch.tensor([[0, 0, r * view_size, c * view_size] for r, c in grids])  # (K, 4) int64, (y0, x0, y1, x1)
    box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (K,) int64
    image_box = torch.tensor([0, 0, height, width]).unsqueeze(0)  # (1, 4) int64

    ratio = (boxes[:, 2:] / image_box[:, 2:]).min(dim=-1)[0]  # (K,) float32: fit the image in the canvas
    fill = torch.round(height * ratio) * torch.round(width * ratio) / box_areas

    enlarged = image_box * 1.4  # (1, 4) float32
    enlarged_area = (enlarged[:, 2] - enlarged[:, 0]) * (enlarged[:, 3] - enlarged[:, 1])
    top_left = torch.max(boxes[:, None, :2], enlarged[:, :2])  # (K, 1, 2)
    bottom_right = torch.min(boxes[:, None, 2:], enlarged[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]  # (K, 1)
    union = box_areas[:, None] + enlarged_area - inter
    iou = (inter / (union + 1e-5))[:, 0]

    score = fill + iou * 0.1
    return [(r, c, float(f), float(i), float(s)) for (r, c), f, i, s in zip(grids, fill, iou, score)]


def _fit(height: int, width: int, box_h: int, box_w: int) -> tuple[int, int]:
    """Resize (h, w) to fit (box_h, box_w) keeping the aspect ratio, rounding as the reference does."""
    h_ratio, w_ratio = box_h / height, box_w / width
    if h_ratio <= w_ratio:
        return box_h, max(1, min(box_w, round(width * h_ratio)))  # max(1, ...): a 20000x20 strip keeps a row
    return max(1, min(box_h, round(height * w_ratio))), box_w


def choose_partition(
    height: int, width: int, patch_num: int = 9, view_size: int = 336, max_tiles: int | None = None
) -> Partition:
    """Choose the grid for an h x w image (argmax score, first wins ties) among grids of at most
    `max_tiles` tiles (None: no limit beyond `patch_num`'s list)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max_tiles is not None and max_tiles < 1:
        raise ValueError(f"max_tiles must be at least 1, got {max_tiles}")
    scored = score_grids(height, width, patch_num, view_size)
    candidates = tuple(
        GridCandidate(r, c, f, i, s, allowed=max_tiles is None or r * c <= max_tiles) for r, c, f, i, s in scored
    )
    scores = torch.tensor([s if cand.allowed else float("-inf") for (_, _, _, _, s), cand in zip(scored, candidates)])
    best = candidates[int(torch.argmax(scores))]
    rows, cols = best.rows, best.cols
    resized = _fit(height, width, rows * view_size, cols * view_size)
    # The thumbnail fits the *original* aspect ratio into one view, but resamples the padded canvas.
    thumbnail = _fit(height, width, view_size, view_size) if rows * cols > 1 else None
    return Partition(rows, cols, (height, width), view_size, resized, thumbnail, candidates)


def num_visual_tokens(rows: int, cols: int, tokens_per_view: int) -> int:
    """Tiles, ',' between tiles of a row, a row separator after each row, and thumbnail + separator."""
    n = rows * cols
    count = n * tokens_per_view + (n - rows) + rows
    if n > 1:
        count += tokens_per_view + 1
    return count
