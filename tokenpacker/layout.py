"""Visual layout: where every visual token sits in the LLM sequence and on the original image.

Three pure pieces, used by the model (to splice) and by every picture (to draw):
- `View` maps a view's pixels back to the original image (inverting pad/resize/crop or resize/paste/
  tile/thumbnail);
- `visual_sequence` is the order of views and separators in the LLM input (SPEC §2, HD step 5);
- `VisualLayout` combines them with a prompt position into one record per visual token.
Boxes are continuous pixel rectangles [x0, y0, x1, y1) of the original image.
"""

from dataclasses import dataclass, field

import numpy as np

from .partition import Partition, num_visual_tokens

VIEW_SEPARATOR = ","  # between tiles of one row
ROW_SEPARATOR = "\n"  # after each tile row and after the thumbnail


@dataclass(frozen=True)
class View:
    """One CLIP view. View pixel (u, v) lies at original pixel (u * scale_x + offset_x, v * scale_y + offset_y)."""

    index: int  # order in which the view is fed to CLIP
    kind: str  # "single" (pad mode), "tile" or "global" (HD thumbnail)
    tile: tuple[int, int] | None  # (row, col) of a tile
    size: int  # view side in pixels
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    @property
    def name(self) -> str:
        if self.kind == "tile":
            return f"tile ({self.tile[0]}, {self.tile[1]})"
        return "global thumbnail" if self.kind == "global" else "view"

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        return u * self.scale_x + self.offset_x, v * self.scale_y + self.offset_y

    def from_image(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.offset_x) / self.scale_x, (y - self.offset_y) / self.scale_y

    def to_dict(self) -> dict:
        return {"index": self.index, "kind": self.kind, "name": self.name, "tile": self.tile, "size": self.size,
                "scale": [self.scale_x, self.scale_y], "offset": [self.offset_x, self.offset_y]}  # fmt: skip


def pad_views(image_size: tuple[int, int], shortest_edge: int, crop_size: int) -> list[View]:
    """Pad mode: pad (w, h) to a centred square of side L, resize to `shortest_edge`, centre-crop."""
    width, height = image_size
    side = max(width, height)
    pad_x, pad_y = (side - width) // 2, (side - height) // 2
    scale = side / shortest_edge
    crop = int((shortest_edge - crop_size) / 2)
    return [View(0, "single", None, crop_size, scale, scale, crop * scale - pad_x, crop * scale - pad_y)]


def slice_views(partition: Partition) -> list[View]:
    """HD mode: tiles of the canvas the image was resized onto (top-left), then the thumbnail of that canvas."""
    height, width = partition.image_size
    resized_h, resized_w = partition.resized_size
    size = partition.view_size
    sx, sy = width / resized_w, height / resized_h  # canvas pixel -> original pixel
    views = [
        View(i * partition.cols + j, "tile", (i, j), size, sx, sy, j * size * sx, i * size * sy)
        for i in range(partition.rows)
        for j in range(partition.cols)
    ]
    if partition.has_thumbnail:
        thumb_h, thumb_w = partition.thumbnail_size
        canvas_h, canvas_w = partition.canvas_size
        views.append(View(len(views), "global", None, size, canvas_w / thumb_w * sx, canvas_h / thumb_h * sy, 0.0, 0.0))
    return views


def visual_sequence(grid: tuple[int, int] | None) -> list[tuple[str, object]]:
    """Order of the LLM's visual input as ("view", k) and ("sep", "," or "\\n") entries.

    `grid` is None in pad mode (one view, no separator). In slice mode every tile row ends with the row
    separator, a 1x1 grid included, and more than one tile adds the thumbnail and a row separator.
    """
    if grid is None:
        return [("view", 0)]
    rows, cols = grid
    plan = []
    for i in range(rows):
        for j in range(cols):
            plan.append(("view", i * cols + j))
            if j < cols - 1:
                plan.append(("sep", VIEW_SEPARATOR))
        plan.append(("sep", ROW_SEPARATOR))
    if rows * cols > 1:
        plan += [("view", rows * cols), ("sep", ROW_SEPARATOR)]
    return plan


@dataclass
class VisualLayout:
    """Per visual token of one request: sequence position, view, point-grid cell and original-image box.

    Arrays are indexed by visual token k (0 .. num_tokens-1), in sequence order.
    """

    image_size: tuple[int, int]  # original (w, h)
    mode: str  # "pad" or "slice"
    grid: tuple[int, int]  # HD rows x cols (1 x 1 in pad mode)
    point_grid: int  # G
    view_size: int  # pixels per view side
    views: list[View]
    start: int  # sequence position of the first visual embedding
    positions: np.ndarray  # (N,) int64: sequence positions of the point-query tokens
    view_index: np.ndarray  # (N,) int64
    gy: np.ndarray  # (N,) int64
    gx: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) float64: [x0, y0, x1, y1) on the original image, clipped
    padding: np.ndarray  # (N,) bool: the token's cell shows only padding
    separators: list[tuple[int, str]] = field(default_factory=list)  # (sequence position, "," or "\n")

    @property
    def num_tokens(self) -> int:
        """Point-query tokens (separators excluded)."""
        return len(self.positions)

    @property
    def length(self) -> int:
        """Visual embeddings in the sequence, separators included."""
        return self.num_tokens + len(self.separators)

    @property
    def separator_positions(self) -> np.ndarray:
        return np.array([pos for pos, _ in self.separators], dtype=np.int64)

    def view_tokens(self, view: int) -> np.ndarray:
        """Indices k of the view's tokens, row-major over its G x G grid."""
        return np.nonzero(self.view_index == view)[0]

    def tokens_at(self, x: float, y: float) -> np.ndarray:
        """Indices k of the tokens (at most one per view) whose box contains original pixel point (x, y)."""
        b = self.boxes
        inside = (b[:, 0] <= x) & (x < b[:, 2]) & (b[:, 1] <= y) & (y < b[:, 3]) & ~self.padding
        return np.nonzero(inside)[0]

    def records(self) -> list[dict]:
        """JSON-ready list of {"pos", "view", "gy", "gx", "box", "padding"}."""
        return [
            {"pos": int(p), "view": int(v), "gy": int(y), "gx": int(x),
             "box": [round(float(c), 3) for c in box], "padding": bool(pad)}  # fmt: skip
            for p, v, y, x, box, pad in zip(self.positions, self.view_index, self.gy, self.gx, self.boxes, self.padding)
        ]


def build_layout(
    image_size: tuple[int, int], views: list[View], mode: str, grid: tuple[int, int], point_grid: int, start: int
) -> VisualLayout:
    """Lay the views' G x G point queries and the separators out from sequence position `start`."""
    width, height = image_size
    cell = views[0].size / point_grid  # view pixels per point query
    positions, view_index, gy, gx, boxes, separators = [], [], [], [], [], []
    pos = start
    for kind, what in visual_sequence(grid if mode == "slice" else None):
        if kind == "sep":
            separators.append((pos, what))
            pos += 1
            continue
        view = views[what]
        for y in range(point_grid):
            for x in range(point_grid):
                x0, y0 = view.to_image(x * cell, y * cell)
                x1, y1 = view.to_image((x + 1) * cell, (y + 1) * cell)
                boxes.append((max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)))
                positions.append(pos)
                view_index.append(view.index)
                gy.append(y)
                gx.append(x)
                pos += 1
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    padding = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    boxes[padding] = 0.0
    layout = VisualLayout(
        image_size=(width, height), mode=mode, grid=grid if mode == "slice" else (1, 1), point_grid=point_grid,
        view_size=views[0].size, views=views, start=start, positions=np.array(positions, dtype=np.int64),
        view_index=np.array(view_index, dtype=np.int64), gy=np.array(gy, dtype=np.int64),
        gx=np.array(gx, dtype=np.int64), boxes=boxes, padding=padding, separators=separators,
    )  # fmt: skip
    if mode == "slice":
        expected = num_visual_tokens(grid[0], grid[1], point_grid**2)
        assert layout.length == expected, f"layout has {layout.length} visual embeddings, expected {expected}"
    return layout
