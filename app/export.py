"""PNG downloads of the views, drawn with matplotlib from the same data as the page's plotly figures."""

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .views import Overlay, RegionDetail  # noqa: E402


def _save(fig, name: str, directory: str | None = None) -> Path:
    directory = Path(directory or tempfile.mkdtemp(prefix="tokenpacker-"))
    path = directory / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def overlay_png(spec: Overlay, name: str, directory: str | None = None) -> Path:
    width, height = spec.size
    fig, ax = plt.subplots(figsize=(7, 7 * height / width + 0.6))
    ax.imshow(spec.image, extent=(0, width, height, 0))
    if spec.heat is not None:
        shown = ax.imshow(spec.heat, extent=(0, width, height, 0), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        fig.colorbar(shown, ax=ax, fraction=0.04, label=spec.heat_label)
    if spec.points is not None:
        p = spec.points
        shown = ax.scatter(p.x, p.y, c=p.value, s=(p.size * 0.8) ** 2 / 4, cmap="inferno", vmin=0, vmax=1,
                           edgecolors="white", linewidths=0.3)  # fmt: skip
        fig.colorbar(shown, ax=ax, fraction=0.04, label="relative attention")
    for x0, y0, x1, y1, label in spec.boxes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#00e5ff", linewidth=1.5))
        ax.text(x0 + 4, y0 + 4, label, color="#00e5ff", fontsize=8, va="top", backgroundcolor=(0, 0, 0, 0.4))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    ax.set_title(spec.title, fontsize=9)
    return _save(fig, name, directory)


def region_png(detail: RegionDetail, name: str, directory: str | None = None) -> Path:
    grids = [*detail.weights, detail.mean]
    fig, axes = plt.subplots(1, len(grids), figsize=(1.6 * len(grids), 2.2))
    for i, (ax, grid) in enumerate(zip(np.atleast_1d(axes), grids)):
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        for (r, c), value in np.ndenumerate(grid):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
        ax.set_title("mean" if i == len(grids) - 1 else f"head {i}", fontsize=8)
        ax.set_axis_off()
    fig.suptitle(detail.title, fontsize=9)
    return _save(fig, name, directory)


def region_map_png(title: str, grid: np.ndarray, view_image, scale_factor: int, name: str, directory: str | None = None) -> Path:
    size = view_image.width
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(view_image, extent=(0, size, size, 0))
    shown = ax.imshow(grid, extent=(0, size, size, 0), cmap="viridis", alpha=0.55, vmin=0, vmax=1)
    step = size / grid.shape[0] * scale_factor
    for i in range(1, grid.shape[0] // scale_factor):
        ax.axhline(i * step, color="white", linewidth=0.3)
        ax.axvline(i * step, color="white", linewidth=0.3)
    fig.colorbar(shown, ax=ax, fraction=0.04, label="weight")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return _save(fig, name, directory)


def scores_png(rows: list[list], name: str, directory: str | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(10, 3))
    colors = ["#ff7f0e" if r[5] else ("#1f77b4" if r[4] == "yes" else "#bbbbbb") for r in rows]
    ax.bar(range(len(rows)), [r[3] for r in rows], color=colors)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("fill + 0.1 x IoU")
    ax.set_title("Candidate grids (orange = chosen, grey = over the tile limit)", fontsize=9)
    return _save(fig, name, directory)
