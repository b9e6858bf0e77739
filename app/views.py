"""What each "look inside" view shows, as plain data: (image, trace, choices) -> arrays and labels.

No plotting library here: figures.py draws these with plotly for the page, export.py with matplotlib for
PNG downloads, so the two always show the same numbers. Coordinates are original-image pixels.
"""

import html
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tokenpacker import Answer, Trace

DISPLAY_SIDE = 640  # longest side of the image drawn behind the overlays
HEAT_SIDE = 160  # longest side of a heat map raster


@dataclass
class Points:
    x: np.ndarray  # (K,) centres on the original image
    y: np.ndarray
    value: np.ndarray  # (K,) colour value
    size: np.ndarray  # (K,) marker size in display pixels
    hover: list[str]
    token: np.ndarray  # (K,) visual token index k of each marker


@dataclass
class Overlay:
    title: str
    image: Image.Image  # display-size copy of the original image
    size: tuple[int, int]  # original (w, h): the coordinate system of heat, points and boxes
    heat: np.ndarray | None = None  # (rows, cols) raster over the whole image, 0..1
    heat_label: str = "relative attention"
    points: Points | None = None
    boxes: list[tuple[float, float, float, float, str]] = field(default_factory=list)


@dataclass
class Selection:
    """Which answer tokens and LLM layers a view aggregates."""

    tokens: list[int] | None = None  # None: the whole answer
    layers: list[int] | None = None  # None: all layers
    reduce: str = "mean"  # head "mean" or "max"
    label: str = "whole answer"

    @property
    def description(self) -> str:
        layers = "all layers" if self.layers is None else f"layers {self.layers[0]}-{self.layers[-1]}"
        return f"{self.label}, {layers}, head {self.reduce}"


def display_image(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    scale = min(1.0, side / max(image.size))
    if scale == 1.0:
        return image.convert("RGB")
    return image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def _raster_size(size: tuple[int, int], side: int = HEAT_SIDE) -> tuple[int, int]:
    w, h = size
    scale = min(1.0, side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _normalised(values: np.ndarray) -> np.ndarray:
    top = values.max() if values.size else 0.0
    return values / top if top > 0 else values


def selection(trace: Trace, mode: str, index: int | None, first_layer: int, last_layer: int, reduce: str) -> Selection:
    """mode: "answer", "word" or "token"; index picks the word/token; layers are inclusive, 0-based."""
    layers = list(range(max(0, first_layer), min(trace.num_layers - 1, last_layer) + 1)) or None
    if layers is not None and len(layers) == trace.num_layers:
        layers = None
    if mode == "word" and index is not None:
        words = trace.words()
        if 0 <= index < len(words):
            text, tokens = words[index]
            return Selection(tokens, layers, reduce, f'word "{text}"')
    if mode == "token" and index is not None and 0 <= index < trace.num_rows:
        return Selection([index], layers, reduce, f'token "{trace.token_texts[index]}"')
    return Selection(None, layers, reduce, "whole answer")


def heatmap(image: Image.Image, trace: Trace, choice: Selection, composed: bool = False) -> Overlay:
    """Answer -> image attention on the original image: per point-query token, or (composed) per CLIP patch
    through the region-to-point weights."""
    values = trace.answer_attention(choice.tokens, choice.layers, choice.reduce)
    cells = trace.patch_attention(values) if composed else trace.token_grid(values)
    heat = trace.image_map(cells, _raster_size(trace.layout.image_size))
    kind = "Composed map (CLIP patches x region-to-point weights)" if composed else "Answer -> image attention"
    return Overlay(f"{kind}: {choice.description}", display_image(image), trace.layout.image_size, _normalised(heat))


def token_hover(trace: Trace, k: int, attention: float) -> str:
    layout = trace.layout
    view = layout.views[layout.view_index[k]]
    lines = [f"{view.name}, cell ({layout.gy[k]}, {layout.gx[k]})", f"attention {attention:.4f}"]
    if trace.region_weights is not None:
        weights = trace.region_mean()[view.index, layout.gy[k], layout.gx[k]]  # (s, s)
        rows = [" ".join(f"{w:.2f}" for w in row) for row in weights]
        lines.append("region weights (head mean):<br>" + "<br>".join(rows))
    return "<br>".join(lines)


def point_grid(image: Image.Image, trace: Trace, choice: Selection, views: str = "tiles") -> Overlay:
    """The G x G point queries of the chosen views at their cell centres, coloured by answer attention.
    views: "tiles" (or the single pad-mode view) or "thumbnail"."""
    layout = trace.layout
    values = trace.answer_attention(choice.tokens, choice.layers, choice.reduce)
    wanted = {v.index for v in layout.views if (v.kind == "global") == (views == "thumbnail")}
    tokens = np.nonzero(np.isin(layout.view_index, list(wanted)) & ~layout.padding)[0]
    boxes = layout.boxes[tokens]
    display = display_image(image)
    scale = display.width / layout.image_size[0]
    cell = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * scale
    points = Points(
        x=(boxes[:, 0] + boxes[:, 2]) / 2, y=(boxes[:, 1] + boxes[:, 3]) / 2, value=_normalised(values[tokens]),
        size=np.clip(cell * 0.6, 3, 30), hover=[token_hover(trace, int(k), float(values[k])) for k in tokens],
        token=tokens,
    )  # fmt: skip
    which = "thumbnail" if views == "thumbnail" else ("tiles" if layout.mode == "slice" else "view")
    return Overlay(f"Point queries ({which}, {layout.point_grid}x{layout.point_grid} per view): {choice.description}",
                   display, layout.image_size, points=points)  # fmt: skip


def tokens_at(trace: Trace, x: float, y: float) -> list[int]:
    return [int(k) for k in trace.layout.tokens_at(x, y)]


@dataclass
class RegionDetail:
    title: str
    weights: np.ndarray  # (heads, s, s)
    mean: np.ndarray  # (s, s)


def region_detail(trace: Trace, k: int) -> RegionDetail:
    layout = trace.layout
    view = layout.views[layout.view_index[k]]
    weights = trace.region_weights[view.index, layout.gy[k], layout.gx[k]]  # (heads, s, s)
    title = f"Region-to-point weights of {view.name}, point ({layout.gy[k]}, {layout.gx[k]})"
    return RegionDetail(title, weights, weights.mean(axis=0))


def view_region_map(trace: Trace, view: int) -> tuple[str, np.ndarray]:
    """(R, R): every CLIP patch's weight inside its own region (head mean), for one view."""
    G, s = trace.layout.point_grid, trace.scale_factor
    region = trace.region_mean()[view]  # (G, G, s, s)
    grid = region.transpose(0, 2, 1, 3).reshape(G * s, G * s)  # (gy, dy, gx, dx) -> (R, R)
    return f"Region-to-point weights over {trace.layout.views[view].name} (each {s}x{s} region sums to 1)", grid


def partition(image: Image.Image, trace: Trace) -> Overlay:
    """The original image with the HD tiles' extents (or the pad-mode view's square)."""
    layout = trace.layout
    boxes = []
    for view in layout.views:
        if view.kind == "global":
            continue
        x0, y0 = view.to_image(0, 0)
        x1, y1 = view.to_image(view.size, view.size)
        boxes.append((x0, y0, x1, y1, view.name))
    rows, cols = layout.grid
    title = (f"HD partition: {rows}x{cols} tiles + global thumbnail" if len(layout.views) > 1
             else ("HD partition: 1 tile" if layout.mode == "slice" else "Pad mode: one padded square view"))  # fmt: skip
    return Overlay(title, display_image(image), layout.image_size, boxes=boxes)


def candidate_rows(trace: Trace) -> list[list]:
    return [[f"{c['rows']}x{c['cols']}", c["fill"], c["iou"], c["score"], "yes" if c["allowed"] else "no (tile limit)",
             "chosen" if c["chosen"] else ""] for c in trace.partition.candidates]  # fmt: skip


def budget_markdown(trace: Trace, answer: Answer) -> str:
    report = trace.partition
    shares = trace.shares()
    split = ", ".join(f"{name} {100 * value:.1f}%" for name, value in shares.items())
    return (
        f"**{report.visual_tokens} visual tokens** ({len(report.views)} views x {report.tokens_per_view} point queries"
        f" + {report.separators} separators). A LLaVA-1.5 MLP projector would feed **{report.mlp_visual_tokens}**"
        f" ({report.mlp_tokens_per_view} per view): TokenPacker uses {100 / report.compression:.1f}% of that "
        f"({report.compression:.1f}x fewer).\n\nWhere the answer's attention went (head mean, all layers): {split}."
    )


def view_images(pixel_values, mean, std) -> list[Image.Image]:
    """Denormalise (V, 3, S, S) CLIP inputs back to pictures of what each view saw."""
    pixels = pixel_values.numpy().transpose(0, 2, 3, 1) * np.array(std) + np.array(mean)
    return [Image.fromarray(np.clip(p * 255 + 0.5, 0, 255).astype(np.uint8)) for p in pixels]


def word_attention_at(trace: Trace, x: float, y: float, layers=None, reduce: str = "mean") -> list[tuple[str, float]]:
    """Each answer word with how much it attended to the visual tokens that show pixel (x, y), 0..1."""
    per_token = trace.attention_at(x, y, layers, reduce)
    words = [(text, float(per_token[idx].mean())) for text, idx in trace.words()]
    top = max((v for _, v in words), default=0.0)
    return [(text, v / top if top > 0 else 0.0) for text, v in words]


def answer_html(answer: Answer, piece) -> str:
    """The answer with each token coloured by its probability and its top alternatives on hover."""
    spans = []
    for token, logprob, alternatives in zip(answer.token_ids, answer.logprobs, answer.alternatives):
        text = piece(token)
        if not text:
            continue
        p = float(np.exp(logprob))
        hue = int(120 * p)  # red (unlikely) .. green (certain)
        tip = ", ".join(f"{piece(i) or '</s>'!r} {np.exp(lp):.2f}" for i, lp in alternatives)
        spans.append(f'<span class="tp-token" style="background:hsla({hue},70%,50%,0.25)" '
                     f'title="p={p:.2f} | {html.escape(tip)}">{html.escape(text)}</span>')  # fmt: skip
    return "".join(spans)
