"""The app's pure parts: session transitions, view data, figures and PNG exports (no browser)."""

import numpy as np
import pytest

from app import export, figures, views
from app.session import ChatSession
from app.settings import parse
from tokenpacker import SamplingSettings
from tests.conftest import scene


@pytest.fixture(scope="module")
def answered(hd_model):
    image = scene(1024, 768, seed=11)
    session = ChatSession()
    session.ask("What is in the image?", image, "/tmp/x.png")
    answer = hd_model.ask(image, session.history(), settings=SamplingSettings(max_new_tokens=5), capture=True)
    session.finish(answer)
    return session, answer, image


def test_session_transitions():
    s = ChatSession()
    s.ask("first?", image=scene(50, 40), image_path="a.png")
    assert s.pending == "first?" and [t.question for t in s.history()] == ["first?"]
    from tokenpacker import Answer

    s.finish(Answer(text="one", done=True, finish_reason="eos"))
    s.ask("second?")
    assert s.pending == "second?" and s.history()[0].answer == "one" and s.history()[1].answer is None
    messages = s.messages(streaming=Answer(text="tw"))
    assert messages[0]["content"] == {"path": "a.png"} and messages[-1] == {"role": "assistant", "content": "tw"}
    s.finish(Answer(text="two", done=True, finish_reason="stopped"))
    assert s.messages()[-1]["content"].endswith("(stopped)")
    assert s.retract_last() == "second?" and s.pending == "second?" and s.selected == 0
    s.drop_pending()
    assert s.pending is None and len(s.questions) == 1


def test_settings_from_flags_and_environment(monkeypatch):
    assert parse([]).host == "127.0.0.1" and parse([]).share is False and parse([]).model is None
    monkeypatch.setenv("TOKENPACKER_MODEL", "some/model")
    monkeypatch.setenv("TOKENPACKER_QUANTIZATION", "4bit")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    settings = parse([])
    assert (settings.model, settings.quantization, settings.host, settings.port) == ("some/model", "4bit", "0.0.0.0", 7861)
    assert parse(["--model", "local/dir", "--port", "9000"]).model == "local/dir"


def test_heatmap_and_composed_views(answered):
    session, answer, image = answered
    trace = answer.trace
    choice = views.selection(trace, "answer", None, 0, 1, "mean")
    heat = views.heatmap(image, trace, choice)
    assert heat.heat.shape == (120, 160) and heat.heat.max() == pytest.approx(1.0) and heat.heat.min() >= 0
    assert heat.image.size == (640, 480) and heat.size == (1024, 768)
    composed = views.heatmap(image, trace, choice, composed=True)
    assert composed.heat.shape == heat.heat.shape and not np.allclose(composed.heat, heat.heat)
    word = views.selection(trace, "word", 0, 1, 1, "max")
    assert word.tokens == trace.words()[0][1] and word.layers == [1] and "head max" in word.description


def test_point_grid_and_hover(answered):
    _, answer, image = answered
    trace = answer.trace
    choice = views.selection(trace, "answer", None, 0, 1, "mean")
    tiles = views.point_grid(image, trace, choice, "tiles")
    thumbnail = views.point_grid(image, trace, choice, "thumbnail")
    on_image = ~trace.layout.padding
    assert len(tiles.points.x) == (on_image & (trace.layout.view_index < 6)).sum()
    assert len(thumbnail.points.x) == (on_image & (trace.layout.view_index == 6)).sum()
    assert "region weights" in tiles.points.hover[0] and "tile (0, 0)" in tiles.points.hover[0]
    assert tiles.points.value.max() == pytest.approx(1.0)


def test_region_views_and_partition(answered):
    _, answer, image = answered
    trace = answer.trace
    k = views.tokens_at(trace, 500.0, 400.0)[0]
    detail = views.region_detail(trace, k)
    assert detail.weights.shape == (trace.region_weights.shape[3], 2, 2)
    assert detail.mean.sum() == pytest.approx(1.0, abs=1e-5)
    title, grid = views.view_region_map(trace, 6)
    assert grid.shape == (24, 24) and "global thumbnail" in title
    assert grid.reshape(12, 2, 12, 2).sum(axis=(1, 3)) == pytest.approx(np.ones((12, 12)), abs=1e-5)
    part = views.partition(image, trace)
    assert len(part.boxes) == 6 and "2x3 tiles" in part.title
    rows = views.candidate_rows(trace)
    assert len(rows) == 23 and [r[0] for r in rows if r[5]] == ["2x3"]
    assert "1015 visual tokens" in views.budget_markdown(trace, answer)


def test_words_at_a_point_and_probability_html(answered, hd_model):
    _, answer, _ = answered
    trace = answer.trace
    words = views.word_attention_at(trace, 300.0, 200.0)
    assert [w for w, _ in words] == [w for w, _ in trace.words()]
    assert max(v for _, v in words) == pytest.approx(1.0) or all(v == 0 for _, v in words)
    html = views.answer_html(answer, hd_model.tokenizer.id_to_piece)
    assert html.count('class="tp-token"') == sum(1 for t in answer.token_ids if hd_model.tokenizer.id_to_piece(t))
    assert "title=\"p=" in html


def test_figures_and_pngs(answered, tmp_path):
    _, answer, image = answered
    trace = answer.trace
    choice = views.selection(trace, "answer", None, 0, 1, "mean")
    heat = views.heatmap(image, trace, choice)
    fig = figures.overlay(heat)
    assert [t.type for t in fig.data] == ["heatmap"] and len(fig.layout.images) == 1
    points = figures.overlay(views.point_grid(image, trace, choice))
    assert points.data[0].type == "scatter" and len(points.data[0].x) > 0
    assert len(figures.region_detail(views.region_detail(trace, 0)).data) == trace.region_weights.shape[3] + 1
    assert len(figures.candidate_scores(views.candidate_rows(trace)).data[0].x) == 23
    for path in (export.overlay_png(heat, "heat", tmp_path), export.region_png(views.region_detail(trace, 0), "region", tmp_path),
                 export.scores_png(views.candidate_rows(trace), "scores", tmp_path)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_view_pictures_are_cut_once_per_image_and_tile_count(answered, hd_model):
    """The inspector re-renders on every widget change; the views' pictures are cut once and kept in the session
    (for its current image and the answer's tile count), and a new image starts afresh."""
    from types import SimpleNamespace

    from app.inspector import view_pictures

    session, answer, image = answered
    calls = []

    def processor(picture, max_tiles=None):
        calls.append(max_tiles)
        return hd_model.image_processor(picture, max_tiles=max_tiles)

    runtime = SimpleNamespace(pipeline=SimpleNamespace(config=hd_model.config, image_processor=processor))
    s = ChatSession(image=image, questions=list(session.questions), answers=list(session.answers))
    first = view_pictures(runtime, s, answer)
    assert view_pictures(runtime, s, answer) is first and calls == [answer.grid[0] * answer.grid[1]]
    expected = views.view_images(hd_model.image_processor(image, max_tiles=calls[0]).pixel_values,
                                 hd_model.config.image_mean, hd_model.config.image_std)  # fmt: skip
    assert len(first) == len(answer.trace.layout.views) == len(expected)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, expected))
    s.ask("and now?", scene(640, 480, seed=3), "/tmp/y.png")
    assert s.view_pictures == {}
