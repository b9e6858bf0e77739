"""The "look inside" panel's outputs for one answer: every view, and the PNG / trace downloads.

Pure functions of (session, widget values): figures come from views.py data drawn by figures.py (page)
or export.py (PNG).
"""

import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from tokenpacker import Answer

from . import export, figures, views
from .session import ChatSession


def answer_label(s: ChatSession, index: int) -> str | None:
    if not 0 <= index < len(s.answers):
        return None
    return f"{index + 1}: {s.questions[index][:40]} → {s.answers[index].text[:30]}"


def selection(trace, mode_value, item_value, first, last, reduce_value) -> views.Selection:
    index = int(str(item_value).split(":")[0]) if item_value else None
    kind = {"whole answer": "answer", "word": "word", "token": "token"}[mode_value or "whole answer"]
    return views.selection(trace, kind, index, int(first), int(last), reduce_value or "mean")


def item_choices(trace, mode_value) -> list[str]:
    if mode_value == "word":
        return [f"{i}: {w}" for i, (w, _) in enumerate(trace.words())]
    if mode_value == "token":
        return [f"{i}: {t!r}" for i, t in enumerate(trace.token_texts[: trace.num_rows])]
    return []


def render(runtime, s: ChatSession, pick, mode_value, item_value, first, last, reduce_value, which_value,
                     view_value, color) -> tuple:  # fmt: skip
    """Every view of the selected answer (about 0.1-0.3 s for the default model)."""
    labels = [answer_label(s, i) for i in range(len(s.answers))]
    if pick in labels:
        s.selected = labels.index(pick)
    answer = s.answer
    html = views.answer_html(answer, runtime.pipeline.tokenizer.id_to_piece) if (answer and color) else ""
    if answer is None or answer.trace is None:
        empty = [gr.update(choices=labels, value=answer_label(s, s.selected))] + [gr.skip()] * 16 + [html]
        return tuple(empty)
    trace = answer.trace
    layers = trace.num_layers
    first, last = min(int(first), layers - 1), min(int(last), layers - 1)
    if first > last:
        first, last = last, first
    choices = item_choices(trace, mode_value)
    if item_value not in choices:
        item_value = choices[0] if choices else None
    choice = selection(trace, mode_value, item_value, first, last, reduce_value)
    image = s.image
    view_labels = [f"{v.index}: {v.name}" for v in trace.layout.views]
    view_value = view_value if view_value in view_labels else view_labels[0]
    view_index = int(view_value.split(":")[0])
    pictures = view_pictures(runtime, s, answer)
    region_title, region_grid = views.view_region_map(trace, view_index)
    rows = views.candidate_rows(trace)
    which_value = which_value if (which_value == "tiles" or len(trace.layout.views) > 1) else "tiles"
    point_words = [(w, None) for w, _ in trace.words()]
    region = None
    if s.point is not None:
        hit = views.tokens_at(trace, *s.point)
        point_words = views.word_attention_at(trace, *s.point, choice.layers, choice.reduce)
        region = figures.region_detail(views.region_detail(trace, hit[0])) if hit else None
    return (
        gr.update(choices=labels, value=answer_label(s, s.selected)),
        gr.update(choices=choices, value=item_value),
        gr.update(maximum=layers - 1, value=first),
        gr.update(maximum=layers - 1, value=last),
        gr.update(choices=view_labels, value=view_value),
        figures.overlay(views.heatmap(image, trace, choice)),
        figures.overlay(views.point_grid(image, trace, choice, which_value)),
        views.display_image(image),
        point_words,
        region,
        figures.view_region_map(region_title, region_grid, pictures[view_index], trace.scale_factor),
        figures.overlay(views.heatmap(image, trace, choice, composed=True)),
        figures.overlay(views.partition(image, trace)),
        views.budget_markdown(trace, answer),
        [(p, v.name) for p, v in zip(pictures, trace.layout.views)],
        figures.candidate_scores(rows) if rows else None,
        rows,
        html,
    )


def view_pictures(runtime, s: ChatSession, answer: Answer) -> list:
    """What each view of `answer` saw: the session's image re-cut with the tile count the answer was given,
    kept in the session (re-cutting a large image takes about 0.4 s; every widget change re-renders)."""
    tiles = answer.grid[0] * answer.grid[1] if answer.grid else None
    if tiles not in s.view_pictures:
        config = runtime.pipeline.config
        pixel_values = runtime.pipeline.image_processor(s.image, max_tiles=tiles).pixel_values
        s.view_pictures[tiles] = views.view_images(pixel_values, config.image_mean, config.image_std)
    return s.view_pictures[tiles]


def figure_png(runtime, s: ChatSession, figure, mode_value, item_value, first, last, reduce_value, which_value, view_value):
    answer = s.answer
    if answer is None or answer.trace is None:
        raise gr.Error("Ask a question about an image first: there is no answer to export.")
    trace, image = answer.trace, s.image
    choice = selection(trace, mode_value, item_value, first, last, reduce_value)
    directory = tempfile.mkdtemp(prefix="tokenpacker-png-")
    name = figure.replace(" ", "-")
    if figure == "heatmap":
        return str(export.overlay_png(views.heatmap(image, trace, choice), name, directory))
    if figure == "composed map":
        return str(export.overlay_png(views.heatmap(image, trace, choice, composed=True), name, directory))
    if figure == "point queries":
        return str(export.overlay_png(views.point_grid(image, trace, choice, which_value or "tiles"), name, directory))
    if figure == "HD partition":
        return str(export.overlay_png(views.partition(image, trace), name, directory))
    if figure == "region map":
        view_index = int(str(view_value).split(":")[0]) if view_value else 0
        picture = view_pictures(runtime, s, answer)[view_index]
        title, grid = views.view_region_map(trace, view_index)
        return str(export.region_map_png(title, grid, picture, trace.scale_factor, name, directory))
    hit = views.tokens_at(trace, *s.point) if s.point else []
    k = hit[0] if hit else int(np.argmax(trace.answer_attention()))
    return str(export.region_png(views.region_detail(trace, k), name, directory))


def export_trace(s: ChatSession):
    answer = s.answer
    if answer is None or answer.trace is None:
        raise gr.Error("Ask a question about an image first: there is no trace to download.")
    directory = tempfile.mkdtemp(prefix="tokenpacker-trace-")
    return str(answer.trace.save(Path(directory) / f"trace-answer-{s.selected + 1}.npz"))
