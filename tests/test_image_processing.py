import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from tokenpacker.configuration import CLIP_MEAN, CLIP_STD, TokenPackerConfig
from tokenpacker.image_processing import ImageProcessor
from tokenpacker.layout import build_layout
from tests.conftest import scene


def processor(mode="pad", patch_num=9, scale=2):
    config = TokenPackerConfig(vision_config=dict(image_size=336, patch_size=14, num_hidden_layers=24),
                               image_aspect_ratio=mode, patch_num=patch_num, scale_factor=scale)  # fmt: skip
    return ImageProcessor(config), config


def layout_of(prepared, config):
    return build_layout(prepared.image_size, prepared.views, prepared.mode, prepared.grid, config.point_grid, start=10)


@pytest.mark.parametrize("size", [(640, 480), (300, 900), (336, 336), (57, 31)])
def test_pad_mode_is_llava_expand2square_plus_clip_processor(size):
    image = scene(*size)
    ours = processor("pad")[0](image).pixel_values
    width, height = size
    side = max(size)
    square = Image.new("RGB", (side, side), (122, 116, 104))  # int(255 * CLIP mean)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))  # fmt: skip
    reference = clip(square, return_tensors="pt")["pixel_values"]
    assert ours.shape == (1, 3, 336, 336)
    torch.testing.assert_close(ours, reference, atol=0, rtol=0)


def test_pad_colour():
    assert processor("pad")[0].pad_color == (122, 116, 104)


def test_hd_tiles_and_thumbnail_pixels():
    image = scene(1024, 768, seed=3)
    prepared = processor("slice")[0](image)
    assert prepared.grid == (2, 3) and prepared.pixel_values.shape == (7, 3, 336, 336)

    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    normalized = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - mean) / std
    canvas = torch.zeros(3, 672, 1008)
    canvas[:, :672, :896] = F.interpolate(normalized[None], size=(672, 896), mode="bilinear", align_corners=False)[0]
    for i in range(2):
        for j in range(3):
            tile = prepared.pixel_values[i * 3 + j]
            torch.testing.assert_close(tile, canvas[:, i * 336 : (i + 1) * 336, j * 336 : (j + 1) * 336])
    assert prepared.pixel_values[2, :, :, 896 - 672 :].abs().max() == 0  # right of the image: zero (= mean colour)
    thumbnail = prepared.pixel_values[6]
    expected = F.interpolate(canvas[None], size=(252, 336), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(thumbnail[:, :252], expected)
    assert thumbnail[:, 252:].abs().max() == 0


def test_single_tile_has_no_thumbnail():
    prepared = processor("slice")[0](scene(300, 280))
    assert prepared.grid == (1, 1) and prepared.pixel_values.shape == (1, 3, 336, 336)


def test_max_tiles():
    prepared = processor("slice")[0](scene(1088, 1088), max_tiles=4)
    assert prepared.grid == (2, 2) and prepared.pixel_values.shape[0] == 5


SIZES = [(1200, 300), (200, 900), (20, 15), (4000, 3000), (640, 480)]


def _marker_views(image_size, x, y, mode, radius):
    base = Image.new("RGB", image_size, (128, 128, 128))
    marked = base.copy()
    pixels = np.array(marked)
    pixels[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = (255, 255, 0)
    proc, config = processor(mode)
    plain, hot = proc(base), proc(Image.fromarray(pixels))
    response = (hot.pixel_values - plain.pixel_values).abs().sum(1)  # (V, S, S)
    return hot, response, config


@pytest.mark.parametrize("mode", ["pad", "slice"])
@pytest.mark.parametrize("size", SIZES)
def test_marked_pixel_lands_in_the_token_whose_box_contains_it(mode, size):
    width, height = size
    rng = np.random.default_rng(width + height)
    proc, config = processor(mode)
    layout = layout_of(proc(Image.new("RGB", size)), config)
    scale = max(v.scale_x for v in layout.views)
    radius = int(np.ceil(scale / 2)) if scale > 1 else 0  # downsampling without antialias skips pixels
    margin = radius + scale if scale > 1 else 0.1  # the response centroid stays this close to the marker
    points = []
    while len(points) < 3:  # random marker positions at least `margin` inside their cell in every view
        x, y = int(rng.integers(1, width - 1)), int(rng.integers(1, height - 1))
        boxes = layout.boxes[layout.tokens_at(x + 0.5, y + 0.5)]
        inner = np.minimum.reduce([x + 0.5 - boxes[:, 0], y + 0.5 - boxes[:, 1], boxes[:, 2] - x - 0.5, boxes[:, 3] - y - 0.5])
        if (inner >= margin).all():
            points.append((x, y))
    for x, y in points:
        hot, response, config = _marker_views(size, x, y, mode, radius)
        hit_views = [v for v in range(response.shape[0]) if response[v].max() > 1e-3]
        expected = layout.tokens_at(x + 0.5, y + 0.5)
        assert set(layout.view_index[expected]) <= set(hit_views)  # blur may reach a neighbouring tile too
        if scale > 1:  # downsampled: no blur across cells, exactly the views that show the point respond
            assert set(layout.view_index[expected]) == set(hit_views)
        for k in expected:
            view = layout.views[layout.view_index[k]]
            weights = response[view.index].numpy()
            vs, us = np.mgrid[0 : view.size, 0 : view.size] + 0.5
            u_c, v_c = (weights * us).sum() / weights.sum(), (weights * vs).sum() / weights.sum()  # response centroid
            cell = view.size / layout.point_grid
            assert (int(v_c // cell), int(u_c // cell)) == (layout.gy[k], layout.gx[k]), (view.name, x, y)
            back_x, back_y = view.to_image(u_c, v_c)  # the centroid maps back onto the marker
            assert abs(back_x - (x + 0.5)) <= 1 + view.scale_x and abs(back_y - (y + 0.5)) <= 1 + view.scale_y


@pytest.mark.parametrize("mode", ["pad", "slice"])
@pytest.mark.parametrize("size", SIZES)
def test_boxes_tile_the_image_without_gaps(mode, size):
    proc, config = processor(mode)
    prepared = proc(Image.new("RGB", size))
    layout = layout_of(prepared, config)
    width, height = size
    groups = [[v.index for v in layout.views if v.kind != "global"], [v.index for v in layout.views if v.kind == "global"]]
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    for group in [g for g in groups if g]:
        tokens = np.isin(layout.view_index, group) & ~layout.padding
        boxes = layout.boxes[tokens]
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
        assert area == pytest.approx(width * height, rel=1e-9)
        if width * height <= 1_000_000:
            coverage = np.zeros((height, width), dtype=int)
            for bx0, by0, bx1, by1 in boxes:
                coverage += (xs >= bx0) & (xs < bx1) & (ys >= by0) & (ys < by1)
            assert (coverage == 1).all()


def test_padding_tokens_are_marked():
    proc, config = processor("pad")
    layout = layout_of(proc(Image.new("RGB", (1200, 300))), config)
    # 1200x300 padded to 1200x1200: 450 px of padding above and below = 4.5 of 12 token rows each side.
    rows = layout.padding.reshape(12, 12).all(axis=1)
    assert rows.tolist() == [True] * 4 + [False] * 4 + [True] * 4
    assert not layout.padding.reshape(12, 12)[4].any()
