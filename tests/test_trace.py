import numpy as np
import pytest
import torch

from tokenpacker import SamplingSettings, Trace
from tokenpacker.trace import splat
from tests.conftest import scene
from tests.test_projector import literal_region_attention


@pytest.fixture(scope="module")
def hd_answer(hd_model):
    return hd_model.ask(scene(1024, 768, seed=7), "What is in the image?", settings=SamplingSettings(max_new_tokens=6), capture=True)


def test_region_weights_equal_an_independent_recomputation(hd_model, hd_answer):
    request = hd_model.prepare(scene(1024, 768, seed=7), "What is in the image?")
    with torch.no_grad():
        features, multi = hd_model.model.model.vision_tower(request.image.pixel_values)
        _, weights = literal_region_attention(hd_model.model.model.mm_projector, features[:2], multi[:2])
    np.testing.assert_allclose(hd_answer.trace.region_weights[:2], weights.numpy(), atol=1e-5)


def test_answer_attention_selections(hd_answer):
    trace = hd_answer.trace
    whole = trace.answer_attention()
    np.testing.assert_allclose(whole, trace.attention_mean.mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(trace.answer_attention(tokens=2, layers=[1]), trace.attention_mean[1, 2], rtol=1e-6)
    np.testing.assert_allclose(trace.answer_attention(reduce="max"), trace.attention_max.mean(axis=(0, 1)), rtol=1e-6)
    words = trace.words()
    specials = {i for i, t in enumerate(trace.token_texts) if t in ("</s>", "<s>", "<unk>")}
    assert sorted(i for _, idx in words for i in idx) == sorted(set(range(len(trace.token_ids))) - specials)
    shares = trace.shares()
    assert set(shares) == {v.name for v in trace.layout.views} | {"separators", "text"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4)


def test_composed_map_preserves_each_views_mass(hd_answer):
    trace = hd_answer.trace
    values = trace.answer_attention()
    patches = trace.patch_attention(values)
    assert patches.shape == (7, 24, 24)
    np.testing.assert_allclose(patches.sum(axis=(1, 2)), trace.token_grid(values).sum(axis=(1, 2)), rtol=1e-5)
    # patch (gy*s+dy, gx*s+dx) = token(gy, gx) x weight(dy, dx), averaged over heads
    region = trace.region_weights.mean(axis=3)
    grid = trace.token_grid(values)
    assert patches[3, 5 * 2 + 1, 7 * 2 + 0] == pytest.approx(grid[3, 5, 7] * region[3, 5, 7, 1, 0], rel=1e-6)


def test_image_map_is_mass_preserving_and_exact(hd_answer):
    trace = hd_answer.trace
    values = trace.answer_attention()
    grid = trace.token_grid(values)
    heat = trace.image_map(grid)
    assert heat.shape == (768, 1024)
    on_image = values[~trace.layout.padding]
    # Partly-padded cells keep only their on-image part; fully padded ones drop out.
    boxes = trace.layout.boxes
    full_area = np.array([trace.layout.views[v].scale_x * trace.layout.views[v].scale_y * (336 / 12) ** 2 for v in trace.layout.view_index])
    expected = (values * (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / full_area).sum()
    assert heat.sum() == pytest.approx(expected, rel=1e-6) and expected <= on_image.sum() + 1e-9
    small = trace.image_map(grid, out_size=(256, 192))
    assert small.shape == (192, 256) and small.sum() == pytest.approx(heat.sum(), rel=1e-6)
    # A single token's mass lands exactly inside its box.
    k = int(np.nonzero(trace.layout.view_index == 1)[0][30])
    one = np.zeros_like(values)
    one[k] = 1.0
    heat_one = trace.image_map(trace.token_grid(one))
    x0, y0, x1, y1 = boxes[k]
    ys, xs = np.nonzero(heat_one > 0)
    assert xs.min() >= np.floor(x0) and xs.max() < np.ceil(x1) and ys.min() >= np.floor(y0) and ys.max() < np.ceil(y1)


def test_splat_of_uniform_cells_is_uniform():
    from tokenpacker.layout import View

    view = View(0, "single", None, 12, 2.0, 2.0, 0.0, 0.0)  # 12 px view over a 24 px image
    heat = splat(np.ones((1, 3, 3)), [view], (24, 24))
    np.testing.assert_allclose(heat, np.full((24, 24), 9 / 576))


def test_partition_report(hd_answer):
    report = hd_answer.trace.partition
    assert report.grid == (2, 3) and report.visual_tokens == 1015
    assert len(report.candidates) == 23 and sum(c["chosen"] for c in report.candidates) == 1
    assert report.mlp_visual_tokens == 7 * 576 + 7 and report.compression == pytest.approx(4039 / 1015)
    chosen = next(c for c in report.candidates if c["chosen"])
    assert chosen["score"] == max(c["score"] for c in report.candidates)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_export_round_trip(hd_answer, tmp_path, suffix):
    trace = hd_answer.trace
    path = trace.save(tmp_path / f"trace{suffix}")
    again = Trace.load(path)
    assert again.token_ids == trace.token_ids and again.token_texts == trace.token_texts
    np.testing.assert_allclose(again.attention_mean, trace.attention_mean, atol=1e-7)
    np.testing.assert_allclose(again.region_weights, trace.region_weights, atol=1e-7)
    np.testing.assert_array_equal(again.layout.positions, trace.layout.positions)
    np.testing.assert_allclose(again.layout.boxes, trace.layout.boxes)
    assert again.partition == trace.partition
    np.testing.assert_allclose(again.image_map(again.token_grid(again.answer_attention())),
                               trace.image_map(trace.token_grid(trace.answer_attention())), rtol=1e-5)  # fmt: skip
