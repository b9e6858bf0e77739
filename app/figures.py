"""Plotly figures for the page, drawn from the plain data of views.py."""

import base64
import io

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .views import Overlay, RegionDetail

HEAT_COLORS = "Inferno"
BOX_COLOR = "#00e5ff"


def _data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_axes(fig: go.Figure, size: tuple[int, int], height: int = 480) -> go.Figure:
    width, img_h = size
    fig.update_xaxes(range=[0, width], showgrid=False, zeroline=False, constrain="domain", visible=False)
    fig.update_yaxes(range=[img_h, 0], showgrid=False, zeroline=False, scaleanchor="x", visible=False)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="#111", hovermode="closest")
    return fig


def overlay(spec: Overlay) -> go.Figure:
    """The original image with a heat raster, point markers and/or labelled boxes on top."""
    width, height = spec.size
    fig = go.Figure()
    fig.add_layout_image(source=_data_uri(spec.image), xref="x", yref="y", x=0, y=0, sizex=width, sizey=height,
                         sizing="stretch", layer="below")  # fmt: skip
    if spec.heat is not None:
        rows, cols = spec.heat.shape
        fig.add_trace(go.Heatmap(
            z=spec.heat, x0=width / cols / 2, dx=width / cols, y0=height / rows / 2, dy=height / rows,
            colorscale=HEAT_COLORS, opacity=0.6, zmin=0, zmax=1, colorbar=dict(title=spec.heat_label, thickness=12),
            hovertemplate="x %{x:.0f}, y %{y:.0f}<br>" + spec.heat_label + " %{z:.2f}<extra></extra>",
        ))  # fmt: skip
    if spec.points is not None:
        p = spec.points
        fig.add_trace(go.Scatter(
            x=p.x, y=p.y, mode="markers", customdata=p.token, text=p.hover, hovertemplate="%{text}<extra></extra>",
            marker=dict(size=p.size, color=p.value, colorscale=HEAT_COLORS, cmin=0, cmax=1, opacity=0.85,
                        line=dict(width=0.5, color="white"), colorbar=dict(title="relative attention", thickness=12)),
        ))  # fmt: skip
    for x0, y0, x1, y1, label in spec.boxes:
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line=dict(color=BOX_COLOR, width=2))
        fig.add_annotation(x=x0, y=y0, text=label, showarrow=False, xanchor="left", yanchor="top",
                           font=dict(color=BOX_COLOR, size=11), bgcolor="rgba(0,0,0,0.5)")  # fmt: skip
    fig.update_layout(title=dict(text=spec.title, font=dict(size=13)))
    return _image_axes(fig, spec.size)


def region_detail(detail: RegionDetail) -> go.Figure:
    """The s x s softmax weights of one point query: each head, then their mean."""
    heads = detail.weights.shape[0]
    titles = [f"head {h}" for h in range(heads)] + ["mean"]
    fig = make_subplots(rows=1, cols=heads + 1, subplot_titles=titles, horizontal_spacing=0.02)
    for i, grid in enumerate([*detail.weights, detail.mean]):
        s = grid.shape[0]
        fig.add_trace(go.Heatmap(
            z=grid, zmin=0, zmax=1, colorscale="Viridis", showscale=i == heads, text=np.round(grid, 2),
            texttemplate="%{text}", hovertemplate="patch (%{y}, %{x}): %{z:.3f}<extra></extra>",
            colorbar=dict(title="weight", thickness=10),
        ), row=1, col=i + 1)  # fmt: skip
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i + 1 if i else ''}", showticklabels=False, row=1, col=i + 1)
        fig.update_xaxes(showticklabels=False, row=1, col=i + 1, range=[-0.5, s - 0.5])
    fig.update_layout(title=dict(text=detail.title, font=dict(size=13)), height=260, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def view_region_map(title: str, grid: np.ndarray, view_image, scale_factor: int) -> go.Figure:
    """One view as CLIP saw it, with every patch's weight inside its region."""
    size = view_image.width
    R = grid.shape[0]
    fig = go.Figure()
    fig.add_layout_image(source=_data_uri(view_image), xref="x", yref="y", x=0, y=0, sizex=size, sizey=size,
                         sizing="stretch", layer="below")  # fmt: skip
    fig.add_trace(go.Heatmap(
        z=grid, x0=size / R / 2, dx=size / R, y0=size / R / 2, dy=size / R, zmin=0, zmax=1, opacity=0.55,
        colorscale="Viridis", colorbar=dict(title="weight", thickness=12),
        hovertemplate="patch (%{y:.0f}, %{x:.0f}) px<br>weight %{z:.3f}<extra></extra>",
    ))  # fmt: skip
    step = size / R * scale_factor
    for i in range(1, R // scale_factor):  # region borders
        fig.add_shape(type="line", x0=i * step, x1=i * step, y0=0, y1=size, line=dict(color="white", width=0.5))
        fig.add_shape(type="line", y0=i * step, y1=i * step, x0=0, x1=size, line=dict(color="white", width=0.5))
    fig.update_layout(title=dict(text=title, font=dict(size=13)))
    return _image_axes(fig, (size, size), height=420)


def candidate_scores(rows: list[list]) -> go.Figure:
    """Score of every candidate grid, the chosen one highlighted."""
    labels = [f"{r[0]} ({i})" for i, r in enumerate(rows)]
    colors = ["#ff7f0e" if r[5] else ("#1f77b4" if r[4] == "yes" else "#bbbbbb") for r in rows]
    fig = go.Figure(go.Bar(x=labels, y=[r[3] for r in rows], marker_color=colors,
                           hovertemplate="%{x}: score %{y:.4f}<extra></extra>"))  # fmt: skip
    fig.update_layout(title=dict(text="Candidate grids: fill + 0.1 x IoU (orange = chosen, grey = over the tile limit)",
                                 font=dict(size=13)), height=300, margin=dict(l=10, r=10, t=40, b=10))  # fmt: skip
    return fig
