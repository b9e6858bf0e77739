"""The explainability trace of one answer, and the maps computed from it.

A `Trace` holds the request's visual layout, the projector's region-to-point weights, the answer
attention captured during generation (capture.py) and the partition report. All maps here are pure
numpy functions of the trace:

- `answer_attention`: attention of a selection of answer tokens (whole answer, a word, a token) to each
  visual token, averaged over chosen layers, head mean or head max;
- `patch_attention`: that attention pushed through the region-to-point weights onto each view's R x R
  CLIP patches (the composed map, finer than the token grid);
- `image_map`: any per-cell map of the views splatted onto the original image's pixels, mass-preserving
  (a cell's value spread uniformly over the image rectangle it covers; tiles and thumbnail add up).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .layout import View, VisualLayout, build_layout


@dataclass
class PartitionReport:
    mode: str
    image_size: tuple[int, int]  # (w, h)
    grid: tuple[int, int]
    candidates: list[dict]  # rows, cols, fill, iou, score, allowed, chosen
    views: list[dict]  # name, tokens
    tokens_per_view: int
    separators: int
    visual_tokens: int
    mlp_tokens_per_view: int  # R*R: what a LLaVA-1.5 MLP projector would feed per view
    mlp_visual_tokens: int

    @property
    def compression(self) -> float:
        return self.mlp_visual_tokens / self.visual_tokens


def partition_report(request, raw_grid: int) -> PartitionReport:
    layout, image = request.layout, request.image
    candidates = []
    if image.partition is not None:
        chosen = (image.partition.rows, image.partition.cols)
        seen = False
        for c in image.partition.candidates:
            is_chosen = (c.rows, c.cols) == chosen and not seen
            seen = seen or is_chosen
            candidates.append({"rows": c.rows, "cols": c.cols, "fill": round(c.fill, 6), "iou": round(c.iou, 6),
                               "score": round(c.score, 6), "allowed": c.allowed, "chosen": is_chosen})  # fmt: skip
    per_view = layout.point_grid**2
    views = [{"name": v.name, "tokens": per_view} for v in layout.views]
    seps = len(layout.separators)
    return PartitionReport(
        mode=layout.mode, image_size=layout.image_size, grid=layout.grid, candidates=candidates, views=views,
        tokens_per_view=per_view, separators=seps, visual_tokens=layout.length, mlp_tokens_per_view=raw_grid**2,
        mlp_visual_tokens=len(layout.views) * raw_grid**2 + seps,
    )  # fmt: skip


@dataclass
class Trace:
    layout: VisualLayout
    partition: PartitionReport
    raw_grid: int  # R
    scale_factor: int  # s
    region_weights: np.ndarray | None  # (V, G, G, heads, s, s) float32
    token_ids: list[int] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)  # each answer token's piece, "▁" as a space
    attention_mean: np.ndarray | None = None  # (layers, T, N) head-mean attention to the N visual tokens
    attention_max: np.ndarray | None = None  # (layers, T, N) head-max
    attention_shares: np.ndarray | None = None  # (layers, T, 3): visual, separators, text
    captured_bytes: int = 0
    _tokenizer: object = field(default=None, repr=False, compare=False)

    # -- building, while the answer streams --------------------------------------------------------------
    @classmethod
    def start(cls, request, region_weights, tokenizer) -> "Trace":
        weights = region_weights.cpu().numpy() if region_weights is not None else None
        raw_grid = request.layout.point_grid * (weights.shape[-1] if weights is not None else 1)
        return cls(layout=request.layout, partition=partition_report(request, raw_grid), raw_grid=raw_grid,
                   scale_factor=raw_grid // request.layout.point_grid, region_weights=weights, _tokenizer=tokenizer)  # fmt: skip

    def update(self, token_ids: list[int], captured) -> None:
        self.token_ids = list(token_ids)
        self.token_texts = [self._tokenizer.id_to_piece(t).replace("\u2581", " ") for t in token_ids]
        self.attention_mean = captured.mean.numpy()
        self.attention_max = captured.max.numpy()
        self.attention_shares = captured.shares.numpy()

    # -- selections ---------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.attention_mean.shape[0]

    @property
    def num_rows(self) -> int:
        return self.attention_mean.shape[1]

    def words(self) -> list[tuple[str, list[int]]]:
        """Answer words as (text, token indices): a word starts at a piece beginning with a space; special
        tokens such as </s> belong to no word."""
        words = []
        for i, text in enumerate(self.token_texts[: self.num_rows]):
            if text in ("</s>", "<s>", "<unk>"):
                continue  # special tokens are tokens, not words
            if text.startswith(" ") or not words:
                words.append([text.strip(), [i]])
            else:
                words[-1][0] += text
                words[-1][1].append(i)
        return [(w, idx) for w, idx in words]

    def answer_attention(self, tokens=None, layers=None, reduce: str = "mean") -> np.ndarray:
        """(N,) attention of the selected answer tokens to each visual token.

        tokens: None (whole answer), an int, or a list of token indices; layers: None (all), an int or a
        list/range; reduce: "mean" (head mean) or "max" (head max). Averages over tokens and layers.
        """
        source = {"mean": self.attention_mean, "max": self.attention_max}[reduce]
        rows = _select(tokens, source.shape[1])
        chosen_layers = _select(layers, source.shape[0])
        if len(rows) == 0:
            return np.zeros(source.shape[2], dtype=np.float32)
        return source[np.ix_(chosen_layers, rows)].mean(axis=(0, 1))

    def shares(self, tokens=None, layers=None) -> dict[str, float]:
        """Attention mass split: each view, separators, text (head mean, averaged over tokens and layers)."""
        rows, chosen_layers = _select(tokens, self.num_rows), _select(layers, self.num_layers)
        if len(rows) == 0:
            return {}
        share = self.attention_shares[np.ix_(chosen_layers, rows)].mean(axis=(0, 1))
        per_token = self.answer_attention(tokens, layers, "mean")
        out = {view.name: float(per_token[self.layout.view_index == view.index].sum()) for view in self.layout.views}
        out["separators"] = float(share[1])
        out["text"] = float(share[2])
        return out

    def attention_at(self, x: float, y: float, layers=None, reduce: str = "mean") -> np.ndarray:
        """(T,) per answer token: attention to the visual tokens whose boxes contain original pixel (x, y)
        (one per view that shows it: a tile and the thumbnail), averaged over `layers`."""
        hit = self.layout.tokens_at(x, y)
        source = {"mean": self.attention_mean, "max": self.attention_max}[reduce]
        chosen = _select(layers, source.shape[0])
        if len(hit) == 0 or len(chosen) == 0:
            return np.zeros(source.shape[1], dtype=np.float32)
        return source[np.ix_(chosen, np.arange(source.shape[1]), hit)].sum(axis=2).mean(axis=0)

    # -- maps ---------------------------------------------------------------------------------------------
    def token_grid(self, values: np.ndarray) -> np.ndarray:
        """(N,) per visual token -> (V, G, G)."""
        G = self.layout.point_grid
        grid = np.zeros((len(self.layout.views), G, G), dtype=np.float64)
        grid[self.layout.view_index, self.layout.gy, self.layout.gx] = values
        return grid

    def region_mean(self) -> np.ndarray:
        """(V, G, G, s, s): region-to-point weights averaged over the projector's heads."""
        return self.region_weights.mean(axis=3)

    def patch_attention(self, values: np.ndarray) -> np.ndarray:
        """Composed map: (N,) token attention x region-to-point weights -> (V, R, R) on CLIP patches.

        Patch (gy*s + dy, gx*s + dx) receives attention(token gy, gx) * weight(gy, gx, dy, dx); each view's
        total is preserved (the weights sum to 1 over each region)."""
        G, s = self.layout.point_grid, self.scale_factor
        composed = self.token_grid(values)[:, :, :, None, None] * self.region_mean()  # (V, G, G, s, s)
        return composed.transpose(0, 1, 3, 2, 4).reshape(-1, G * s, G * s)  # (V, gy, dy, gx, dx) -> (V, R, R)

    def image_map(self, cells: np.ndarray, out_size: tuple[int, int] | None = None, views=None) -> np.ndarray:
        """Splat (V, n, n) per-cell masses onto the original image: (out_h, out_w) mass per output pixel.

        Each cell's mass is spread uniformly over its rectangle on the original image; mass over padding
        is dropped. out_size is (w, h), default the original size."""
        return splat(cells, self.layout.views, self.layout.image_size, out_size, views)

    # -- export -------------------------------------------------------------------------------------------
    def metadata(self) -> dict:
        layout = self.layout
        return {
            "image_size": list(layout.image_size), "mode": layout.mode, "grid": list(layout.grid),
            "point_grid": layout.point_grid, "view_size": layout.view_size, "start": layout.start,
            "raw_grid": self.raw_grid, "scale_factor": self.scale_factor,
            "views": [v.to_dict() for v in layout.views], "separators": [[p, k] for p, k in layout.separators],
            "partition": asdict(self.partition), "token_ids": self.token_ids, "token_texts": self.token_texts,
            "captured_bytes": self.captured_bytes,
        }  # fmt: skip

    def to_json(self) -> dict:
        """Everything, arrays as nested lists (fine for small traces)."""
        data = self.metadata()
        data["layout"] = self.layout.records()
        for name in ("region_weights", "attention_mean", "attention_max", "attention_shares"):
            value = getattr(self, name)
            data[name] = None if value is None else value.astype(np.float32).tolist()
        return data

    def save(self, path: str | Path) -> Path:
        """.json writes `to_json()`; .npz writes the arrays with the metadata as a JSON string."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_json()))
            return path
        arrays = {name: getattr(self, name) for name in ("region_weights", "attention_mean", "attention_max", "attention_shares")}
        np.savez_compressed(path, metadata=json.dumps(self.metadata()),
                            **{k: v for k, v in arrays.items() if v is not None})  # fmt: skip
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        path = Path(path)
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            arrays = {k: None if data.get(k) is None else np.asarray(data[k], dtype=np.float32)
                      for k in ("region_weights", "attention_mean", "attention_max", "attention_shares")}  # fmt: skip
        else:
            with np.load(path) as npz:
                data = json.loads(str(npz["metadata"]))
                arrays = {k: (npz[k] if k in npz.files else None)
                          for k in ("region_weights", "attention_mean", "attention_max", "attention_shares")}  # fmt: skip
        views = [View(v["index"], v["kind"], tuple(v["tile"]) if v["tile"] else None, v["size"], *v["scale"], *v["offset"])
                 for v in data["views"]]  # fmt: skip
        layout = build_layout(tuple(data["image_size"]), views, data["mode"], tuple(data["grid"]), data["point_grid"], data["start"])
        partition = PartitionReport(**{**data["partition"], "image_size": tuple(data["partition"]["image_size"]),
                                       "grid": tuple(data["partition"]["grid"])})  # fmt: skip
        return cls(layout=layout, partition=partition, raw_grid=data["raw_grid"], scale_factor=data["scale_factor"],
                   token_ids=data["token_ids"], token_texts=data["token_texts"], captured_bytes=data["captured_bytes"],
                   **arrays)  # fmt: skip


def _select(selection, size: int) -> np.ndarray:
    if selection is None:
        return np.arange(size)
    if isinstance(selection, (int, np.integer)):
        selection = [selection]
    return np.array([i for i in selection if 0 <= i < size], dtype=np.int64)


def _overlaps(edges: np.ndarray, out_edges: np.ndarray) -> np.ndarray:
    """(out, n) lengths of overlap between output intervals and cell intervals (both sorted edge lists)."""
    lo = np.maximum(out_edges[:-1, None], edges[None, :-1])
    hi = np.minimum(out_edges[1:, None], edges[None, 1:])
    return np.clip(hi - lo, 0, None)


def splat(cells: np.ndarray, views: list[View], image_size: tuple[int, int], out_size=None, which=None) -> np.ndarray:
    """Mass-preserving rasterisation of per-view cell grids (V, n, n) onto the original image (see Trace.image_map)."""
    width, height = image_size
    out_w, out_h = out_size or image_size
    out_x = np.linspace(0, width, out_w + 1)
    out_y = np.linspace(0, height, out_h + 1)
    result = np.zeros((out_h, out_w), dtype=np.float64)
    n = cells.shape[-1]
    for view in views:
        if which is not None and view.index not in which:
            continue
        step = view.size / n
        u = np.arange(n + 1) * step
        x_edges = np.clip(u * view.scale_x + view.offset_x, 0, width)  # cell edges on the original image
        y_edges = np.clip(u * view.scale_y + view.offset_y, 0, height)
        cell_w, cell_h = step * view.scale_x, step * view.scale_y  # full (unclipped) cell size
        density = cells[view.index] / (cell_w * cell_h)  # mass per original pixel
        result += _overlaps(y_edges, out_y) @ density @ _overlaps(x_edges, out_x).T
    return result
