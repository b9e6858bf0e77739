import pytest

from tokenpacker.partition import CANDIDATE_GRIDS, choose_partition, num_visual_tokens, score_grids


@pytest.mark.parametrize(
    "width, height, patch_num, grid, tokens",
    [
        (1024, 768, 9, (2, 3), 1015),  # SPEC's example
        (1088, 1088, 9, (3, 3), 1450),
        (1344, 1344, 16, (4, 4), 2465),
        (336, 336, 9, (1, 1), 145),  # one tile: its row separator, no thumbnail
        (640, 480, 9, (2, 3), 1015),
        (300, 900, 9, (3, 1), 580),
        (2000, 500, 9, (1, 4), 725),
        (500, 2000, 9, (4, 1), 725),
        (1344, 1344, 9, (3, 3), 1450),
        (1344, 1344, 25, (5, 5), 3770),  # the 1.4x box favours the larger canvas
        (3000, 1000, 16, (2, 6), 1885),
    ],
)
def test_grid_choice_table(width, height, patch_num, grid, tokens):
    p = choose_partition(height, width, patch_num)
    assert (p.rows, p.cols) == grid
    assert num_visual_tokens(p.rows, p.cols, 144) == tokens


def test_candidate_lists_as_published():
    assert len(CANDIDATE_GRIDS[9]) == 23 and CANDIDATE_GRIDS[9][-3:] == [(3, 3), (1, 9), (9, 1)]
    assert len(CANDIDATE_GRIDS[16]) == 36 and CANDIDATE_GRIDS[16][-1] == (4, 4)
    assert len(CANDIDATE_GRIDS[25]) == 57 and CANDIDATE_GRIDS[25][-1] == (5, 5)
    assert CANDIDATE_GRIDS[25].count((4, 6)) == 2  # duplicates kept, as published
    assert all(r * c <= n for n, grids in CANDIDATE_GRIDS.items() for r, c in grids)


def test_scores_follow_the_formula():
    h, w = 768, 1024
    for r, c, fill, iou, score in score_grids(h, w, 9):
        ratio = min(336 * r / h, 336 * c / w)
        assert fill == pytest.approx(round(h * ratio) * round(w * ratio) / (336 * r * 336 * c), rel=1e-6)
        inter = min(336 * r, 1.4 * h) * min(336 * c, 1.4 * w)
        union = 336 * r * 336 * c + 1.4 * h * 1.4 * w - inter
        assert iou == pytest.approx(inter / union, rel=1e-5)
        assert score == pytest.approx(fill + 0.1 * iou, rel=1e-6)


def test_first_candidate_wins_ties():
    # A square image fits 1x1, 2x2 and 3x3 equally well (fill 1); IoU then decides, and among exact
    # duplicates (4, 6) the first copy is chosen.
    p = choose_partition(336, 336, 9)
    assert (p.rows, p.cols) == (1, 1)
    chosen = [c for c in p.candidates if (c.rows, c.cols) == (1, 1)]
    assert chosen[0].score == max(c.score for c in p.candidates)


def test_resize_and_thumbnail_sizes():
    p = choose_partition(768, 1024, 9)
    assert p.canvas_size == (672, 1008)
    assert p.resized_size == (672, 896)  # height fills two tiles, width keeps the aspect ratio
    assert p.thumbnail_size == (252, 336)  # fits the original's aspect ratio into one view
    assert choose_partition(336, 336, 9).thumbnail_size is None


def test_max_tiles_limits_the_grid():
    p = choose_partition(1088, 1088, 9, max_tiles=4)
    assert (p.rows, p.cols) == (2, 2)
    assert [c.allowed for c in p.candidates].count(False) == sum(r * c > 4 for r, c in CANDIDATE_GRIDS[9])
    one = choose_partition(1088, 1088, 9, max_tiles=1)
    assert (one.rows, one.cols) == (1, 1) and not one.has_thumbnail


def test_bad_arguments():
    with pytest.raises(ValueError, match="patch_num"):
        score_grids(100, 100, 10)
    with pytest.raises(ValueError, match="positive"):
        choose_partition(0, 10)
    with pytest.raises(ValueError, match="max_tiles"):
        choose_partition(10, 10, max_tiles=0)
