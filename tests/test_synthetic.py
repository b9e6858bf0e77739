"""The synthetic-scene task and the embedded default model trained on it."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import tokenpacker
from tokenpacker.layout import build_layout
from tokenpacker.loading import DEFAULT_MODEL
from tokenpacker.synthetic.evaluate import EVAL_SEED, answered_questions, evaluate, evaluation_questions, recorded_accuracy
from tokenpacker.synthetic.scenes import (
    COLORS, QUESTION_TYPES, SHAPES, SPLITS, Scene, SceneObject, cell_name, questions, random_scene, sample_question,
)  # fmt: skip
from tokenpacker.synthetic.train import (
    COUNT_MARKS, TRAIN_SEED, ExampleMaker, count_marks, default_config, key_word, patch_labels, token_labels,
    tokenizer_corpus,
)  # fmt: skip


@pytest.mark.parametrize("split", ["standard", "small"])
def test_scenes_follow_the_specification(split):
    rng = random.Random(5)
    limits = SPLITS[split]
    for _ in range(60):
        scene = random_scene(rng, **limits)
        short = min(scene.width, scene.height)
        assert limits["min_side"] <= scene.width <= limits["max_side"] and limits["min_side"] <= scene.height <= limits["max_side"]
        assert max(scene.width, scene.height) <= 4 * short
        assert 1 <= len(scene.objects) <= 5
        for obj in scene.objects:
            assert obj.shape in SHAPES and obj.color in COLORS
            assert limits["min_size"] * short * 0.999 <= obj.size <= limits["max_size"] * short * 1.001 or obj.size == 4.0
            x0, y0, x1, y1 = obj.box
            assert x0 >= 0 and y0 >= 0 and x1 <= scene.width and y1 <= scene.height
        for a in scene.objects:  # non-overlapping boxes
            for b in scene.objects:
                if a is not b:
                    ax0, ay0, ax1, ay1 = a.box
                    bx0, by0, bx1, by1 = b.box
                    assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0
        assert all(v in (0, *range(200, 251)) or v <= 60 for v in scene.background)


def test_questions_and_answers():
    scene = Scene(900, 600, (240, 240, 240), 0, [
        SceneObject("circle", "red", 100, 100, 80), SceneObject("square", "blue", 450, 300, 90),
        SceneObject("triangle", "red", 800, 520, 70),
    ], 0)  # fmt: skip
    qa = {q: a for _, q, a, _ in questions(scene)}
    assert qa["How many objects are there?"] == "3"
    assert qa["How many circles are there?"] == "1" and qa["How many squares are there?"] == "1"
    assert qa["What color is the circle?"] == "red" and qa["What color is the square?"] == "blue"
    assert "What shape is the red object?" not in qa  # two red objects: not asked
    assert qa["What shape is the blue object?"] == "square"
    assert qa["Is there a red triangle?"] == "yes" and qa["Is there a green circle?"] == "no"
    assert qa["Where is the red circle?"] == "top left"
    assert qa["Where is the blue square?"] == "center"
    assert qa["Where is the red triangle?"] == "bottom right"
    assert cell_name(450, 10, 900, 600) == "top center" and cell_name(10, 300, 900, 600) == "middle left"
    kinds = {sample_question(scene, random.Random(i))[0] for i in range(60)}
    assert kinds == set(QUESTION_TYPES)
    answers = {sample_question(scene, random.Random(i), "exists")[2] for i in range(40)}
    assert answers == {"yes", "no"}  # balanced yes/no


@pytest.fixture(scope="module")
def task_tokenizer(tmp_path_factory):
    return tokenpacker.LlamaTokenizer.train(tokenizer_corpus(), tmp_path_factory.mktemp("task-tokenizer"), vocab_size=500,
                                            hard_vocab_limit=False)  # fmt: skip


def test_the_shipped_tokenizer_is_the_recipes_wherever_it_is_saved(task_tokenizer, tmp_path):
    """The recipe's tokenizer trained again, in another directory, has the shipped tokenizer.model's bytes: the file
    records no output path (sentencepiece's `model_prefix`), so `--out` does not change the checkpoint."""
    from sentencepiece import sentencepiece_model_pb2

    again = tokenpacker.LlamaTokenizer.train(tokenizer_corpus(), tmp_path / "elsewhere", vocab_size=500,
                                             hard_vocab_limit=False)  # fmt: skip
    shipped = (DEFAULT_MODEL / "tokenizer.model").read_bytes()
    assert task_tokenizer.model_file.read_bytes() == again.model_file.read_bytes() == shipped
    model = sentencepiece_model_pb2.ModelProto.FromString(shipped)
    assert not model.trainer_spec.HasField("model_prefix") and len(model.pieces) == 500
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["tokenizer.model", "tokenizer_config.json"]


def test_key_words():
    assert key_word("color", "What color is the triangle?") == "triangle"
    assert key_word("shape", "What shape is the red object?") == "red"
    assert key_word("count", "How many objects are there?") == "objects"
    assert key_word("count_shape", "How many squares are there?") == "squares"
    assert key_word("exists", "Is there a blue circle?") == key_word("where", "Where is the blue circle?") == "circle"


def test_rendering_and_dense_labels(task_tokenizer):
    scene = Scene(672, 336, (20, 20, 20), 0, [SceneObject("square", "yellow", 100, 100, 56)], 0)
    pixels = np.array(scene.render())
    assert tuple(pixels[100, 100]) == COLORS["yellow"] and tuple(pixels[300, 600]) == (20, 20, 20)
    colors, shapes = (np.array(m) for m in scene.render_labels())
    assert colors[100, 100] == 1 + list(COLORS).index("yellow") and shapes[100, 100] == 1 + SHAPES.index("square")
    maker = ExampleMaker(task_tokenizer, default_config(task_tokenizer))
    prepared = maker.processor(scene.render())
    labels = patch_labels(scene, prepared.views, 24)
    assert prepared.grid == (1, 2) and labels.shape == (3, 4, 24, 24)
    # The square spans pixels 72..128 of tile (0, 0): patches 5..9 at 14 px per patch.
    assert labels[0, 0, 7, 7] == colors[100, 100] and labels[0, 0, 20, 20] == 0 and labels[1, 0].max() == 0
    assert labels[0, 1, 7, 7] == 1 + SHAPES.index("square") and labels[0, 1, 4, 4] == 0
    # One centre mark per object and view that sees it: (100, 100) is patch (7, 7) of tile (0, 0), and on
    # the thumbnail (672 x 336 fitted to 336 x 168, scale 1/2) pixel (50, 50): patch (3, 3); tile (0, 1) sees nothing.
    assert labels[0, 2].sum() == 1 and labels[0, 2, 7, 7] == 1 and labels[1, 2].sum() == 0
    assert labels[2, 2].sum() == 1 and labels[2, 2, 3, 3] == 1
    # The 3 x 3 cell of the image under each thumbnail patch (patch centres every 28 image px from 14): the
    # square's centre patch is top left (0), the image's last patch bottom right (8); the padding below the image
    # (rows 12..23) and the tiles have none (-1).
    assert labels[2, 3, 3, 3] == 0 and labels[2, 3, 11, 23] == 8 and labels[2, 3, 4, 8] == 4
    assert labels[2, 3, 3, 7] == 0 and labels[2, 3, 3, 8] == 1 and labels[2, 3, 12:].max() == -1
    assert labels[:2, 3].max() == -1


def test_first_patch_marks_are_one_per_object_in_the_tiles_and_in_the_thumbnail(task_tokenizer):
    """`count_mark="first"`: an object's mark is its first patch in reading order on the view's grid extended over
    the image, so an object cut by a tile border is marked once, in the tile holding its top-left, where the centre
    mark goes to the tile holding its centre; the other labels do not change."""
    processor = ExampleMaker(task_tokenizer, default_config(task_tokenizer)).processor
    # A square over pixels 72..128 (rows and columns) and one over columns 308..364, rows 72..128: the second is cut
    # by the border between tile (0, 0) (columns 0..336) and tile (0, 1).
    scene = Scene(672, 336, (20, 20, 20), 0, [SceneObject("square", "yellow", 100, 100, 56),
                                              SceneObject("square", "red", 336, 100, 56)], 0)  # fmt: skip
    views = processor(scene.render()).views
    centre, first = patch_labels(scene, views, 24), patch_labels(scene, views, 24, mark="first")
    assert torch.equal(centre[:, [0, 1, 3]], first[:, [0, 1, 3]])
    # Patch 5 covers pixels 70..84 of a tile, its samples at 71.75, 75.25, ...: the first to hit pixel 72 on.
    assert first[0, 2].nonzero().tolist() == [[5, 5], [5, 22]] and first[1, 2].sum() == 0
    assert centre[0, 2].nonzero().tolist() == [[7, 7]] and centre[1, 2].nonzero().tolist() == [[7, 0]]
    # The thumbnail at scale 1/2: the squares over 36..64 and columns 154..182: patches (2, 2) and (2, 11).
    assert first[2, 2].nonzero().tolist() == [[2, 2], [2, 11]]
    with pytest.raises(ValueError, match="count mark must be one of"):
        count_marks(scene, views[0], 24, mark="middle")
    rng = random.Random(11)
    for _ in range(30):  # on HD partitions of every kind: each object marked once in the tiles, once in the thumbnail
        scene = random_scene(rng, **SPLITS["standard"])
        views = processor(scene.render()).views
        for mark in COUNT_MARKS:
            in_tiles = sorted(i for v in views if v.kind != "global" for i, *_ in count_marks(scene, v, 24, mark))
            in_thumbnail = sorted(i for v in views if v.kind == "global" for i, *_ in count_marks(scene, v, 24, mark))
            assert in_tiles == list(range(len(scene.objects)))
            assert in_thumbnail == (in_tiles if len(views) > 1 else [])


def test_solid_marks_skip_slivers_and_fall_back_to_the_most_covered_patch(task_tokenizer):
    """`count_mark="solid"`: the first patch in reading order that the object covers at least half of (8 of its
    4 x 4 sample points), not a sliver above it; for an object no patch is half covered by, its most covered patch."""
    processor = ExampleMaker(task_tokenizer, default_config(task_tokenizer)).processor
    # A circle of diameter 56 centred at (100, 108): its top (y = 80) dips into patch row 5 (pixels 70..84) only at
    # the row's last sample line (y = 82.25), so "first" takes that sliver, (5, 6), and "solid" the patch below.
    scene = Scene(336, 336, (20, 20, 20), 0, [SceneObject("circle", "red", 100, 108, 56)], 0)
    view = processor(scene.render()).views[0]
    assert count_marks(scene, view, 24, "first") == [(0, 5, 6)]
    assert count_marks(scene, view, 24, "solid") == [(0, 6, 6)]
    # A square of side 8 over pixels 96..104: 2 px in patch column and row 6 (84..98), 6 px in 7 (98..112).
    scene = Scene(336, 336, (20, 20, 20), 0, [SceneObject("square", "blue", 100, 100, 8)], 0)
    view = processor(scene.render()).views[0]
    assert count_marks(scene, view, 24, "first") == [(0, 6, 6)]
    assert count_marks(scene, view, 24, "solid") == [(0, 7, 7)]
    labels = patch_labels(scene, [view], 24, mark="solid")
    assert labels[0, 2].nonzero().tolist() == [[7, 7]] and labels[0, 0, 7, 7] == 1 + list(COLORS).index("blue")


def test_region_marks_are_the_first_block_of_patches_a_point_token_sees(task_tokenizer):
    """`count_mark="region"`: the object's first 2 x 2 block of patches in reading order (the patches one point token
    attends to), all four patches marked, so the point tokens' label marks exactly that token."""
    processor = ExampleMaker(task_tokenizer, default_config(task_tokenizer)).processor
    # A circle of diameter 56 centred at (150, 94): its top row of patches is row 4 (pixels 56..70), first hit at
    # column 10; row 5 reaches column 9, in block column 4 (patch columns 8..9), left of the first patch's block (5).
    scene = Scene(336, 336, (20, 20, 20), 0, [SceneObject("circle", "red", 150, 94, 56)], 0)
    view = processor(scene.render()).views[0]
    assert count_marks(scene, view, 24, "first") == [(0, 4, 10)]
    assert count_marks(scene, view, 24, "region") == [(0, 4, 8)]
    labels = patch_labels(scene, [view], 24, mark="region")
    assert labels[0, 2].nonzero().tolist() == [[4, 8], [4, 9], [5, 8], [5, 9]]
    assert token_labels(labels, 2)[0, 2].nonzero().tolist() == [[2, 4]]


def test_training_examples_are_multi_turn_with_answer_spans(task_tokenizer):
    tokenizer = task_tokenizer
    maker = ExampleMaker(tokenizer, default_config(tokenizer))
    rng = random.Random(TRAIN_SEED)
    for _ in range(3):
        prepared, ids, (spans, keys, rows, places, links, spread, counts, tallies, branches), _ = maker(rng, SPLITS["standard"])
        assert counts == () and spread == () and branches == ()  # without count_spread / count_head / branches
        assert ids.count(-200) == 1 and len(spans) >= 1 and len(keys) == len(spans) == len(rows)
        layout = build_layout(prepared.image_size, prepared.views, prepared.mode, prepared.grid, maker.point_grid,
                              start=ids.index(-200))  # fmt: skip
        for (position, target, objects), (query, key), (start, _, _) in zip(keys, rows, spans):
            first = start + (tokenizer.id_to_piece(ids[start]) == "▁")  # a digit answer comes as '▁', '3'
            assert position < start and target == ids[first]  # the key word precedes its answer, targets its first piece
            assert key == position and query == first - 1  # the token that predicts that piece attends to the key word
            assert np.isin(objects, layout.positions).all() or objects.tolist() == [0]  # point tokens, or <s> for none
        assert spread == ()  # no `count_spread`
        for start, end, kind in spans:
            assert kind in QUESTION_TYPES
            assert ids[end - 1] == tokenizer.eos_token_id  # each answer ends with </s>
            text = tokenizer.decode(ids[start:end]).strip()
            assert text and text == text.lower()


def test_attention_targets_are_the_objects_asked_about(task_tokenizer):
    """The key word's attention target: the tokens whose s x s region shows the object asked about (in every
    view), only the global view's for 'where', the counted objects' centre tokens in the tiles (or, with
    `count_view="global"`, in the global view), none for 'no'."""
    from tokenpacker.image_processing import ImageProcessor
    from tokenpacker.synthetic.scenes import Scene, SceneObject
    from tokenpacker.synthetic.train import attention_target, token_masks

    config = default_config(task_tokenizer)
    triangle = SceneObject("triangle", "red", 200, 150, 120)
    circle, square = SceneObject("circle", "blue", 800, 500, 150), SceneObject("square", "blue", 450, 480, 100)
    scene = Scene(1008, 672, (240, 240, 240), 0.0, [triangle, circle, square], seed=0)
    prepared = ImageProcessor(config)(scene.render())
    assert prepared.grid == (2, 3)  # six 336 px tiles and the global view
    masks = token_masks(patch_labels(scene, prepared.views, config.raw_grid), prepared.views, config.point_grid)
    layout = build_layout(prepared.image_size, prepared.views, prepared.mode, prepared.grid, config.point_grid, start=5)
    is_global = np.array([prepared.views[v].kind == "global" for v in layout.view_index])

    def target(kind, question, answer):
        return attention_target(kind, question, answer, masks, layout)

    def overlaps(selected, obj):  # every selected token's image box meets the object's box
        x0, y0, x1, y1 = obj.box
        boxes = layout.boxes[selected]
        return bool(((boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)).all())

    color = target("color", "What color is the triangle?", "red")
    assert color.any() and overlaps(color, triangle)
    assert color[is_global].any() and color[~is_global].any()  # seen in the thumbnail and in a tile
    where = target("where", "Where is the red triangle?", "top left")
    assert where.any() and not where[~is_global].any() and not (where & ~color).any()
    blue = target("shape", "What shape is the blue object?", "circle")  # two blue objects: both (not asked in the task)
    circle_tokens = target("exists", "Is there a blue circle?", "yes")
    assert overlaps(circle_tokens, circle) and not (circle_tokens & ~blue).any() and (blue & ~circle_tokens).any()
    assert not target("exists", "Is there a green circle?", "no").any()
    counted = target("count", "How many objects are there?", "3")
    assert counted.sum() == 3 and not counted[is_global].any()  # one centre token per object, in the tiles
    assert target("count_shape", "How many squares are there?", "1").sum() == 1
    assert overlaps(target("count_shape", "How many circles are there?", "1"), circle)
    in_thumbnail = attention_target("count", "How many objects are there?", "3", masks, layout, count_view="global")
    assert in_thumbnail.sum() == 3 and not in_thumbnail[~is_global].any()  # count_view "global": the thumbnail's
    circles = attention_target("count_shape", "How many circles are there?", "1", masks, layout, count_view="global")
    assert circles.sum() == 1 and not circles[~is_global].any() and overlaps(circles, circle)
    with pytest.raises(ValueError, match="count_view must be 'tiles' or 'global'"):
        ExampleMaker(task_tokenizer, config, count_view="thumbnail")


@pytest.fixture(scope="module")
def default_model():
    return tokenpacker.load(None, device="cpu")


def test_the_shipped_checkpoint(default_model):
    files = list(DEFAULT_MODEL.iterdir())
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20
    assert default_model.config.image_aspect_ratio == "slice" and default_model.config.patch_num == 9
    assert default_model.config.scale_factor == 2 and default_model.config.view_size == 336
    assert default_model.config.raw_grid == 24


ANSWERS = {
    "color": set(COLORS), "shape": set(SHAPES), "count": {str(n) for n in range(1, 6)},
    "count_shape": {str(n) for n in range(6)}, "exists": {"yes", "no"},
    "where": {"top left", "top center", "top right", "middle left", "center", "middle right", "bottom left",
              "bottom center", "bottom right"},
}  # fmt: skip
SHIPPED_ACCURACY_60 = 48 / 60  # measured on these 60 held-out questions when the checkpoint was shipped (run BD, see #5; BB: 46, AB: 39, Q: 35)


def test_the_default_model_answers_fresh_scenes(default_model):
    """The shipped checkpoint answers held-out scenes in the task's vocabulary, well above chance (the per-type
    chance rates average 0.28), at the accuracy it had when shipped. It is still short of the 0.90 the task asks
    for: see README, "The embedded default model"."""
    rng = random.Random(EVAL_SEED)
    settings = tokenpacker.SamplingSettings(max_new_tokens=6)
    right = []
    for i in range(60):
        scene = random_scene(rng, **SPLITS["standard"])
        kind, question, expected, _ = sample_question(scene, rng, QUESTION_TYPES[i % len(QUESTION_TYPES)])
        text = default_model.ask(scene.render(), question, settings=settings).text
        assert text in ANSWERS[kind], (question, text)
        right.append(text == expected)
    assert np.mean(right) >= SHIPPED_ACCURACY_60 - 0.05, np.mean(right)


def test_recorded_accuracy_is_the_largest_standard_section_of_evaluation_txt(tmp_path):
    shipped = recorded_accuracy(DEFAULT_MODEL)  # the README's figures, from the file the app reads
    assert shipped["n"] == 1000 and shipped["accuracy"] == 0.741
    assert shipped["per_type"] == {"color": 0.8613, "count": 0.4913, "count_shape": 0.68, "exists": 0.9218,
                                   "shape": 0.8659, "where": 0.6512}  # fmt: skip
    (tmp_path / "evaluation.txt").write_text(
        "== standard\n$ python -m tokenpacker evaluate-default --model DIR --device cpu\naccuracy: 0.5000\n"
        "  color: 0.5000 (n=200)\n"
        "== small\n$ python -m tokenpacker evaluate-default --model DIR --split small --n 900\naccuracy: 0.9000\n"
        "== one view\n$ python -m tokenpacker evaluate-default --model DIR --n 900 --max-tiles 1\naccuracy: 0.9000\n"
        "== grounding\n$ python -m tokenpacker evaluate-default --model DIR --n 900 --grounding\naccuracy: 0.9000\n"
        "== another seed\n$ python -m tokenpacker evaluate-default --model DIR --n 900 --seed 7\naccuracy: 0.9000\n"
        "== probe\n$ python -m tokenpacker.synthetic.probe --model DIR\ntower: colour 0.9\n"
    )
    assert recorded_accuracy(tmp_path) == {"n": 200, "accuracy": 0.5, "per_type": {"color": 0.5}}
    assert recorded_accuracy(tmp_path / "missing") is None and recorded_accuracy("org/some-hub-id") is None


def test_evaluate_reports_per_type_accuracy(default_model):
    report = evaluate(default_model, "standard", n=12, seed=EVAL_SEED + 1, grounding=False)
    assert report["n"] == 12 and sum(report["per_type_n"].values()) == 12 and 0 <= report["accuracy"] <= 1
    assert set(report["per_type"]) <= set(QUESTION_TYPES)
    records = list(answered_questions(default_model, "standard", n=12, seed=EVAL_SEED + 1))
    assert len(records) == 12 and all(r.grounding_ratio is None for r in records)
    drawn = list(evaluation_questions("standard", n=12, seed=EVAL_SEED + 1))  # the same draw, without the model
    assert [(r.scene, r.kind, r.question, r.expected, r.target) for r in records] == drawn
    for kind, accuracy in report["per_type"].items():  # the report is the records summed up
        answers = [r.correct for r in records if r.kind == kind]
        assert len(answers) == report["per_type_n"][kind] and np.mean(answers) == accuracy
    first = records[0]  # the first question is the evaluation's: the seed's first scene, the first type
    rng = random.Random(EVAL_SEED + 1)
    scene = random_scene(rng, **SPLITS["standard"])
    assert first.scene == scene and (first.kind, first.question, first.expected, first.target) == sample_question(
        scene, rng, QUESTION_TYPES[0])  # fmt: skip


TINY_RECIPE = dict(steps=2, vision_steps=2, shape_steps=1, projector_steps=2, projector_color_steps=1, warmup_steps=1,
                   batch_size=2, max_turns=2, log_every=1)  # every stage, a step or two  # fmt: skip
TINY_POLISH = dict(polish_steps=2, polish_min_turns=2, polish_max_turns=3)


NO_CELL = dict(tower_cell_start=None, token_cell_start=None, where_own_head=False)  # run AB's recipe's position


@pytest.mark.parametrize("options", [dict(tower_cell_start=1, token_cell_start=1),
                                     dict(where_weight=0.0, sincos_position=False, count_mark="centre", branches=False,
                                          colour_link=False, **NO_CELL),
                                     dict(cell_target=True, colour_link=True, link_head=3, balanced_centres=True, count_head=True,
                                          count_readout=True, mark_weight=4.0, **NO_CELL),
                                     dict(tower_cell_start=1, token_cell_start=1, token_cell_stage2=True)],
                         ids=["default-cells-from-step-1", "run-q-recipe", "cell-colour-link-balanced-centres-count-head-readout-mark-weight",
                              "run-ag-cells-in-stage-2"])  # fmt: skip
def test_training_runs_end_to_end_and_is_reproducible(tmp_path, options):
    """A few steps of every stage, twice with the same seed: identical checkpoints in the project's format; the
    same again when stage 1's tower is taken from the first checkpoint (`tower_from`), and when stages 1-2 are
    taken from a checkpoint that stopped before stage 3 (`resume_from`); by default (run BD's recipe: the `where`
    read-out on a head of its own, the sine-cosine position start, first-patch count marks, questions as branches,
    the cell for the tower and the tokens, here from stage 1's and 1b's second step, the colour link on layer 0's
    head 1), by run Q's recipe (none of these), with the cell target, the colour link on layer 0's head 3, the
    balanced centre terms (the tokens' weighing 4), the count head and the count read-out, and with the tokens'
    cell in stage 2's dense probe too (run AG's)."""
    from safetensors.torch import load_file

    from tokenpacker.synthetic.train import train

    tiny, polish = {**TINY_RECIPE, **options}, TINY_POLISH
    for name in ("a", "b"):
        train(tmp_path / name, **tiny, **polish)
    train(tmp_path / "c", **tiny, **polish, tower_from=tmp_path / "a")  # stage 1 taken from a's checkpoint
    train(tmp_path / "stage2", **tiny, polish_steps=0)
    train(tmp_path / "d", **tiny, **polish, resume_from=tmp_path / "stage2")  # stages 1-2 taken from a checkpoint
    first, *others = (load_file(tmp_path / name / "model.safetensors") for name in ("a", "b", "c", "d"))
    stage2 = load_file(tmp_path / "stage2" / "model.safetensors")
    assert all(other.keys() == first.keys() for other in others) and any(k.startswith("model.mm_projector.") for k in first)
    assert all(torch.equal(first[k], other[k]) for other in others for k in first)
    assert any(not torch.equal(first[k], stage2[k]) for k in first)  # stage 3 did train
    with pytest.raises(ValueError, match="has had stage 3 already"):
        train(tmp_path / "e", **tiny, **polish, resume_from=tmp_path / "a")
    with pytest.raises(ValueError, match="runs stage 3 only"):
        train(tmp_path / "e", **tiny, polish_steps=0, resume_from=tmp_path / "stage2")
    reloaded = tokenpacker.load(tmp_path / "a", device="cpu")
    summary = json.loads((tmp_path / "a" / "training.json").read_text())
    assert reloaded.config.patch_num == 9 and summary["steps"] == 2 and summary["polish_steps"] == 2
    assert summary["where_weight"] == options.get("where_weight", 1.0)
    assert summary["sincos_position"] == options.get("sincos_position", True)
    assert summary["count_mark"] == options.get("count_mark", "first")
    assert summary["count_readout"] == options.get("count_readout", False)
    assert summary["cell_target"] == options.get("cell_target", False)
    assert summary["count_head"] == options.get("count_head", False)
    assert summary["colour_link"] == options.get("colour_link", True)
    assert summary["link_head"] == options.get("link_head", 1 if summary["colour_link"] else 0)
    assert summary["balanced_centres"] == options.get("balanced_centres", False)
    assert summary["mark_weight"] == options.get("mark_weight", 1.0)
    assert summary["mllm_dtype"] == "bfloat16"
    assert summary["tower_cell_start"] == options["tower_cell_start"]
    assert summary["where_own_head"] == options.get("where_own_head", True)
    assert summary["token_cell_start"] == options["token_cell_start"]
    assert summary["token_cell_stage2"] == options.get("token_cell_stage2", False)
    assert (summary["branches"] is not None) == options.get("branches", True)


def test_the_tokens_cell_is_a_stage_2_target_only_when_asked(tmp_path):
    """With `token_cell_start`, stage 1b teaches the point tokens the object's cell either way; stage 2's dense probe
    reads it only with `token_cell_stage2` (run AG's), so the two stage-2 checkpoints differ and their stage 1b
    does not (the same tower and projector before stage 2, by seed)."""
    from safetensors.torch import load_file

    from tokenpacker.synthetic.train import train

    tiny = {**TINY_RECIPE, "tower_cell_start": 1, "token_cell_start": 1, "polish_steps": 0}
    for name, in_stage2 in (("off", False), ("on", True)):
        train(tmp_path / name / "1b", **tiny | {"steps": 0, "warmup_steps": 0}, token_cell_stage2=in_stage2)
        train(tmp_path / name / "2", **tiny, token_cell_stage2=in_stage2)
    before, after = ({name: load_file(tmp_path / name / stage / "model.safetensors") for name in ("off", "on")}
                     for stage in ("1b", "2"))  # fmt: skip
    assert all(torch.equal(before["off"][k], before["on"][k]) for k in before["off"])
    projector = [k for k in after["off"] if k.startswith("model.mm_projector.")]
    assert projector and any(not torch.equal(after["off"][k], after["on"][k]) for k in projector)


def test_the_tower_cell_target_can_start_late():
    """`PatchHead(cells=True).loss(with_cells=False)` (stage 1 before `tower_cell_start`) is the loss of a head
    without the cell layer and the same other weights; with the cell it adds the cell's cross-entropy."""
    from tokenpacker.synthetic.train import PatchHead

    torch.manual_seed(0)
    plain = PatchHead(16, hidden=8)
    torch.manual_seed(0)
    with_cell = PatchHead(16, hidden=8, cells=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), with_cell.state_dict().values()))
    features = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[[1, 0, 2], [0, 0, 0], [3, 3, 0]], [[0, 4, 0], [0, 4, 4], [0, 0, 0]]])  # colours
    labels = torch.stack([labels, (labels > 0) * 2, torch.zeros_like(labels), torch.arange(9).reshape(3, 3).expand(2, 3, 3)], 1)
    assert torch.equal(with_cell.loss(features, labels, with_cells=False), plain.loss(features, labels))
    assert with_cell.loss(features, labels).item() > plain.loss(features, labels).item()


def test_the_shape_term_can_weigh_each_object_as_much_as_another():
    """`PatchHead(balanced_shapes=True)`: stage 1's shape term is the mean over objects (per view) of each object's
    mean cross-entropy over its outline patches, so a large object counts as much as a small one; plain, the mean
    over all outline patches. `object_weights` gives each object's chosen patches 1 / their number."""
    import torch.nn.functional as F

    from tokenpacker.synthetic.train import PatchHead, boundary, object_weights

    torch.manual_seed(0)
    plain = PatchHead(16, hidden=8)
    torch.manual_seed(0)
    balanced = PatchHead(16, hidden=8, balanced_shapes=True)
    # one view, 4 x 4 patches: a red square of 6 patches and a one-patch green triangle
    colours = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 2]])[None]
    shapes = torch.tensor([[2, 2, 2, 0], [2, 2, 2, 0], [0, 0, 0, 0], [0, 0, 0, 3]])[None]
    labels = torch.stack([colours, shapes, torch.zeros_like(colours), torch.full_like(colours, -1)], 1)
    edge = boundary(colours).reshape(-1)
    weights = object_weights(labels, edge)
    # the view's border counts as the square's own: its outline patches are the 4 beside background
    assert edge.sum() == 5 and torch.allclose(weights[edge], torch.tensor([1 / 4] * 4 + [1.0]))
    assert weights[~edge].abs().sum() == 0
    features = torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(1))
    shape_only = lambda head: head.loss(features, labels, shape_only=True)
    per_patch = F.cross_entropy(plain.shapes(features[0][edge]), shapes.reshape(-1)[edge] - 1, reduction="none")
    torch.testing.assert_close(shape_only(plain), per_patch.mean())
    torch.testing.assert_close(shape_only(balanced), (per_patch[:4].mean() + per_patch[4]) / 2)


def test_the_shape_term_can_add_a_term_per_object_on_its_pooled_patches():
    """`PatchHead(object_shape_weight=w)`: the shape term is the per-patch one plus w times the mean, over every
    view's objects, of the shape MLP's cross-entropy on the mean features of the object's outline patches (the view's
    border counts as the object's own, as in `boundary`); objects of one colour and shape in a view pool together;
    no object, no term."""
    import torch.nn.functional as F

    from tokenpacker.synthetic.train import PatchHead

    torch.manual_seed(0)
    plain = PatchHead(16, hidden=8)
    torch.manual_seed(0)
    pooled = PatchHead(16, hidden=8, object_shape_weight=0.5)
    # view 0: a red square of 6 patches and a one-patch green triangle; view 1: two red circles of one patch each
    colours = torch.tensor([[[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 2]],
                            [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]])  # fmt: skip
    shapes = torch.tensor([[[2, 2, 2, 0], [2, 2, 2, 0], [0, 0, 0, 0], [0, 0, 0, 3]],
                           [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]])  # fmt: skip
    labels = torch.stack([colours, shapes, torch.zeros_like(colours), torch.full_like(colours, -1)], 1)
    features = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(1))
    flat = features.reshape(32, 16)
    means = torch.stack([flat[[2, 4, 5, 6]].mean(0), flat[15], flat[[16, 31]].mean(0)])  # square's outline, triangle, circles
    by_hand = F.cross_entropy(pooled.shapes(means), torch.tensor([1, 2, 0]))
    shape_only = lambda head, ls: head.loss(features, ls, shape_only=True)
    torch.testing.assert_close(shape_only(pooled, labels), shape_only(plain, labels) + 0.5 * by_hand)
    empty = torch.stack([torch.zeros_like(colours)] * 3 + [torch.full_like(colours, -1)], 1)
    assert shape_only(pooled, empty).item() == 0 and pooled.loss(features, empty).item() == plain.loss(features, empty).item()


def test_the_centre_loss_can_weigh_the_rare_centres_as_much_as_the_rest():
    """`centre_loss(balanced=True)`: the mean of the centres' and the other tokens' mean cross-entropy; plain, and
    where a batch has no centre (or only centres), the ordinary cross-entropy."""
    import torch.nn.functional as F

    from tokenpacker.synthetic.train import centre_loss

    logits = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    centres = torch.tensor([0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    each = F.cross_entropy(logits, centres, reduction="none")
    balanced = centre_loss(logits, centres, balanced=True)
    assert torch.allclose(balanced, (each[centres == 1].mean() + each[centres == 0].mean()) / 2)
    assert not torch.allclose(balanced, each.mean())
    assert torch.allclose(centre_loss(logits, centres), each.mean())
    none = torch.zeros(12, dtype=torch.long)
    assert torch.allclose(centre_loss(logits, none, balanced=True), F.cross_entropy(logits, none))


def test_stages_2_and_3_in_float32_agree_to_rounding(tmp_path):
    """`mllm_dtype="float32"` (for CPUs without native bfloat16): recorded, and two runs of one seed agree to
    float32 rounding (not bit for bit, unlike the bfloat16 recipe); "auto" resolves by the CPU; a bad dtype is
    refused before any work."""
    from safetensors.torch import load_file

    from tokenpacker.synthetic.train import cpu_does_bfloat16, resolve_mllm_dtype, train

    tiny = {**TINY_RECIPE, **TINY_POLISH}
    for name in "ab":
        train(tmp_path / name, **tiny, mllm_dtype="float32")
        assert json.loads((tmp_path / name / "training.json").read_text())["mllm_dtype"] == "float32"
    first, second = (load_file(tmp_path / name / "model.safetensors") for name in "ab")
    for k in first:
        torch.testing.assert_close(first[k], second[k], rtol=1e-5, atol=1e-6)
    assert resolve_mllm_dtype("auto") == ("bfloat16" if cpu_does_bfloat16() else "float32")
    assert resolve_mllm_dtype("bfloat16") == "bfloat16" and resolve_mllm_dtype("float32") == "float32"
    with pytest.raises(ValueError, match="mllm_dtype must be 'auto', 'bfloat16' or 'float32', not 'float16'"):
        train(tmp_path / "c", **{**tiny, "mllm_dtype": "float16"})


def test_boundary_patches_are_the_outline_of_each_object():
    from tokenpacker.synthetic.train import boundary

    colors = torch.zeros(1, 6, 6, dtype=torch.long)
    colors[0, 1:4, 1:4] = 2  # a 3x3 object: its ring of 8 patches is the outline, its middle is not
    colors[0, 4:, 4:] = 5  # an object in the view's corner: the edge of the view is no outline
    edge = boundary(colors)[0]
    ring = torch.zeros(6, 6, dtype=torch.bool)
    ring[1:4, 1:4] = True
    ring[2, 2] = False
    corner = torch.zeros(6, 6, dtype=torch.bool)
    corner[4, 4] = corner[4, 5] = corner[5, 4] = True  # next to the first object or the background; not (5, 5)
    assert torch.equal(edge, ring | corner)


def test_probe_reads_colour_and_shape_from_the_default_models_features(default_model):
    """The linear probes of `python -m tokenpacker.synthetic.probe`: colour and shape are linearly readable from
    the tower and from the point tokens (200 scenes: colour 0.99 / 0.98, shape 0.83 / 0.87; chance 1/6 and 1/3;
    here on 30 scenes 0.79 / 0.87), scored on scenes the probe was not fitted on."""
    from tokenpacker.synthetic.probe import probe
    from tokenpacker.synthetic.train import WARMUP_SPLIT

    report = probe(default_model, WARMUP_SPLIT, scenes=30)
    assert set(report) == {"tower", "point tokens"}
    for scores in report.values():
        assert scores["object patches"] > 100
        assert scores["colour"] >= 0.9 and scores["shape"] >= 0.65, report


def test_attention_probe_reads_the_models_own_attention():
    """The attention supervision's probe (head 0 at chosen queries, recomputed in the training SDPA; another head
    where the query set is named (layer, head)) equals the attention the model really computes (eager,
    output_attentions), and the loss is -log of the mass on target."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenpacker.synthetic.train import TRAINING_ATTENTION, AttentionProbe, attention_mass_loss

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, 50, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # the second row is right-padded, as in a training batch
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions  # (B, H, T, T) per layer
    model.set_attn_implementation(TRAINING_ATTENTION)
    rows, positions = torch.tensor([0, 1, 1]), torch.tensor([11, 8, 3])
    probe = AttentionProbe({1: (rows, positions), (1, 2): (rows[1:], positions[1:]), (2, 3): (rows[:1], positions[:1])})
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, attention_probe=probe)
    expected = attentions[1][rows, 0, positions]  # (Q, T): layer 1, head 0
    torch.testing.assert_close(probe.log_probs[1].exp(), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probe.log_probs[1, 2].exp(), attentions[1][rows[1:], 2, positions[1:]], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probe.log_probs[2, 3].exp(), attentions[2][rows[:1], 3, positions[:1]], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(probe.log_probs[1, 2].exp(), expected[1:], atol=1e-3)  # another head's attention
    assert set(probe.log_probs) == {1, (1, 2), (2, 3)}

    loss, mass = attention_mass_loss(probe.log_probs[1], [np.array([0, 2]), np.array([5]), np.array([0])])
    on_target = torch.stack([expected[0, [0, 2]].sum(), expected[1, 5], expected[2, 0]])
    assert mass == pytest.approx(on_target.mean().item(), abs=1e-5)
    assert loss.item() == pytest.approx(-on_target.log().mean().item(), abs=1e-4)


def test_a_spread_row_is_taught_an_even_share_on_each_target():
    """`spread` rows: the cross-entropy to 1/len on each target (least at the even spread, more than the mass's
    -log 1 = 0 when all of it sits on one target); the other rows keep -log mass; the mass reported is the mass."""
    from tokenpacker.synthetic.train import attention_mass_loss

    probs = torch.tensor([[0.5, 0.0, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0], [0.2, 0.3, 0.1, 0.4]]).clamp_min(1e-12)
    targets = [np.array([0, 2]), np.array([0, 2]), np.array([1, 3])]
    loss, mass = attention_mass_loss(probs.log(), targets, spread=torch.tensor([True, True, False]))
    expected = [math.log(2), -(math.log(1.0) + math.log(1e-12)) / 2, -math.log(0.7)]  # even; all on <s>; a mass row
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert mass == pytest.approx((1.0 + 1.0 + 0.7) / 3, abs=1e-6)
    plain, _ = attention_mass_loss(probs.log(), targets)
    assert plain.item() == pytest.approx(-math.log(0.7) / 3, abs=1e-5)
    even, _ = attention_mass_loss(torch.tensor([[0.25] * 4]).log(), [np.arange(4)], spread=torch.tensor([True]))
    assert even.item() == pytest.approx(math.log(4), rel=1e-6)  # the least a 4-way spread can cost


def same_scenes_two_ways(tokenizer, config, **options):
    """Twelve warm-up conversations (seeds 0-11) made by a plain ExampleMaker and by one with `options`: pairs."""
    from tokenpacker.synthetic.train import WARMUP_SPLIT

    plain = ExampleMaker(tokenizer, config, max_turns=8, count_mark="first")
    other = ExampleMaker(tokenizer, config, max_turns=8, count_mark="first", **options)
    return [(plain(random.Random(seed), WARMUP_SPLIT), other(random.Random(seed), WARMUP_SPLIT)) for seed in range(12)]


def attention_loss_calls(config, examples, monkeypatch, **options):
    """batch_loss of a seeded, untrained model on `examples` -> (the arguments of each attention_mass_loss call, its
    outputs)."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic import train as T

    torch.manual_seed(0)
    model = TokenPackerForCausalLM(config).eval()
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    calls, original = [], T.attention_mass_loss
    monkeypatch.setattr(T, "attention_mass_loss", lambda *args: calls.append(args) or original(*args))
    with torch.no_grad():
        outputs = T.batch_loss(model, None, examples, **options)
    monkeypatch.setattr(T, "attention_mass_loss", original)
    return calls, outputs


def test_count_spread_adds_bos_to_counting_targets_only(task_tokenizer, monkeypatch):
    """`count_spread`: the same conversations, with <s> (position 0) added to each counting key word's target and
    those key words listed in `spread`; batch_loss then teaches those rows the spread and no other row."""
    config = default_config(task_tokenizer)
    examples, counted = [], 0
    for plain, spread in same_scenes_two_ways(task_tokenizer, config, count_spread=True):
        assert plain[1] == spread[1] and plain[2].spans == spread[2].spans and torch.equal(plain[3], spread[3])
        for (start, _, kind), (position, target, objects), (position_, target_, objects_) in zip(
                plain[2].spans, plain[2].keys, spread[2].keys):  # fmt: skip
            assert (position, target) == (position_, target_)
            if kind in ("count", "count_shape"):
                assert position in spread[2].spread
                assert objects_.tolist() == ([0] if objects.tolist() == [0] else [0] + objects.tolist())
            else:
                assert position not in spread[2].spread and objects_.tolist() == objects.tolist()
        counted += len(spread[2].spread)
        examples.append(spread)
    assert counted >= 3
    calls, _ = attention_loss_calls(config, examples[:4], monkeypatch)
    log_probs, targets, _, rows = calls[0]  # KEY_LAYER's rows
    keys = [(e[2].spread, position) for e in examples[:4] for position, _, _ in e[2].keys]
    assert rows.tolist() == [position in spread for spread, position in keys] and rows.any()
    assert calls[1][3] is None  # ANSWER_LAYER: masses only


def test_count_head_teaches_its_own_head_an_even_spread_over_bos_and_the_marks(task_tokenizer, monkeypatch):
    """`count_head`: the same conversations and key-word targets (head 0 keeps its mass on the marks); each counting
    key word is also listed in `counts` with <s> and its marks, and batch_loss teaches exactly those rows, in layer
    KEY_LAYER's head COUNT_HEAD (or of the layer given), the even spread, reporting that head's mass under
    (KEY_LAYER, COUNT_HEAD)."""
    from tokenpacker.synthetic import train as T

    config = default_config(task_tokenizer)
    examples, counted = [], 0
    for plain, taught in same_scenes_two_ways(task_tokenizer, config, count_head=True):
        assert plain[1] == taught[1] and torch.equal(plain[3], taught[3]) and not plain[2].counts
        assert (plain[2].spans, plain[2].rows, plain[2].places, plain[2].spread) == (
            taught[2].spans, taught[2].rows, taught[2].places, taught[2].spread)  # fmt: skip
        assert len(plain[2].keys) == len(taught[2].keys) and all(
            (a[0], a[1]) == (b[0], b[1]) and np.array_equal(a[2], b[2]) for a, b in zip(plain[2].keys, taught[2].keys))
        expected = [(position, [0] + ([] if objects.tolist() == [0] else objects.tolist()))
                    for (_, _, kind), (position, _, objects) in zip(plain[2].spans, plain[2].keys)
                    if kind in ("count", "count_shape")]  # fmt: skip
        assert [(position, targets.tolist()) for position, targets in taught[2].counts] == expected
        counted += len(expected)
        examples.append(taught)
    assert counted >= 3 and any(len(targets) > 2 for e in examples for _, targets in e[2].counts)
    calls, (*_, masses, _) = attention_loss_calls(config, examples[:4], monkeypatch)
    assert calls[0][3] is None  # KEY_LAYER's head 0: a mass on every row, as without the count head
    spread_calls = lambda calls: [call for call in calls if len(call) == 4 and call[3] is not None]
    assert len(spread_calls(calls)) == 1
    log_probs, targets, _, spread = spread_calls(calls)[0]  # the count head's
    counts = [(position, t) for e in examples[:4] for position, t in e[2].counts]
    assert len(log_probs) == len(counts) and spread.all() and [t.tolist() for t in targets] == [t.tolist() for _, t in counts]
    assert (T.KEY_LAYER, T.COUNT_HEAD) in masses and 0 < masses[T.KEY_LAYER, T.COUNT_HEAD] < 1
    calls, (*_, masses_0, _) = attention_loss_calls(config, examples[:4], monkeypatch, count_layer=0)  # in layer 0
    layer_0 = spread_calls(calls)[0][0]
    assert (0, T.COUNT_HEAD) in masses_0 and (T.KEY_LAYER, T.COUNT_HEAD) not in masses_0
    assert layer_0.shape == log_probs.shape and not torch.allclose(layer_0, log_probs)


def test_the_mark_regression_reads_unit_rms_tokens_and_starts_at_each_marks_own_error():
    """`TokenHead(mark_values=True)`: a 'mark value' term, the squared error of a per-shape mark read-out, mean over
    the mark tokens plus mean over the rest; read from the tokens at unit RMS (a token's scale does not change it);
    its read-out starts at 0, so the term starts at exactly 1; the other read-outs start as without it."""
    from tokenpacker.synthetic.train import TokenHead, token_labels

    labels = torch.zeros(1, 4, 24, 24, dtype=torch.long)
    labels[0, 0, 2:6, 2:6], labels[0, 1, 2:6, 2:6], labels[0, 2, 2, 2] = 3, 2, 1  # a square, its mark at patch (2, 2)
    labels[0, 0, 10:12, 14:18], labels[0, 1, 10:12, 14:18], labels[0, 2, 10, 15] = 1, 1, 1  # a circle
    labels[0, 3] = -1
    torch.manual_seed(0)
    plain = TokenHead(16, 2)
    torch.manual_seed(0)
    head = TokenHead(16, 2, mark_values=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), head.state_dict().values()))
    assert torch.equal(torch.rand(3), (torch.manual_seed(0), TokenHead(16, 2), torch.rand(3))[-1])  # no draws
    assert "mark value" not in plain.losses(torch.randn(1, 144, 16), labels)
    tokens = torch.randn(1, 144, 16)
    assert head.losses(tokens, labels)["mark value"].item() == pytest.approx(1.0)
    with torch.no_grad():
        head.mark_values.weight.normal_()
    first = head.losses(tokens, labels)["mark value"]
    assert first.item() != pytest.approx(1.0)
    torch.testing.assert_close(head.losses(tokens * 3.0, labels)["mark value"], first, rtol=1e-4, atol=0)  # up to eps
    # the target, by hand: the two mark tokens, (1, 1) a square's and (5, 7) a circle's, in their shapes' columns
    x = tokens.flatten(0, 1)
    predicted = head.mark_values(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    marks = torch.zeros(144, dtype=torch.bool)
    marks[[1 * 12 + 1, 5 * 12 + 7]] = True
    assert torch.equal(token_labels(labels, 2)[0, 2].flatten() == 1, marks)
    target = torch.zeros(144, 3)
    target[1 * 12 + 1, 1], target[5 * 12 + 7, 0] = 1.0, 1.0
    error = (predicted - target).pow(2).sum(-1)
    assert first.item() == pytest.approx((error[marks].mean() + error[~marks].mean()).item(), rel=1e-5)


def test_a_padded_training_batch_gives_each_conversation_what_it_gets_alone(task_tokenizer):
    """`batch_loss` pads conversations of different lengths on the right and passes no attention mask (causal
    attention keeps the padding out of every real token's view): the batch's answer loss is the token-weighted
    mean of each conversation's own, its key-word loss the mean over all key words, its scores theirs."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic.train import TRAINING_ATTENTION, WARMUP_SPLIT, batch_loss

    torch.manual_seed(0)
    config = default_config(task_tokenizer)
    model = TokenPackerForCausalLM(config).eval()
    model.set_attn_implementation(TRAINING_ATTENTION)
    maker = ExampleMaker(task_tokenizer, config, max_turns=4)
    rng = random.Random(3)
    short, long_ = maker(rng, WARMUP_SPLIT), maker(rng, SPLITS["small"])  # one view; several views and turns
    assert short[0].pixel_values.shape[0] < long_[0].pixel_values.shape[0]  # so the short one is padded
    with torch.no_grad():
        together = batch_loss(model, None, [short, long_])
        alone = [batch_loss(model, None, [example]) for example in (short, long_)]
    answer_tokens = [sum(end - start for start, end, _ in example[2].spans) for example in (short, long_)]
    keys = [len(example[2].keys) for example in (short, long_)]
    expected_answer = sum(n * a[0] for n, a in zip(answer_tokens, alone)) / sum(answer_tokens)
    expected_key = sum(n * a[1] for n, a in zip(keys, alone)) / sum(keys)
    torch.testing.assert_close(together[0], expected_answer, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[1], expected_key, atol=1e-5, rtol=1e-4)
    assert together[6] == alone[0][6] + alone[1][6]


def test_where_questions_carry_the_place_their_answer_names(task_tokenizer):
    """Each `where` question of a training conversation gives (its key word's position, the answer's row, its
    column): what the WhereHead reads at the key word."""
    from tokenpacker.synthetic.scenes import COLUMNS, ROWS

    maker = ExampleMaker(task_tokenizer, default_config(task_tokenizer), max_turns=8)
    rng, checked = random.Random(5), 0
    while checked < 5:
        _, ids, (spans, keys, _, places, *_), _ = maker(rng, SPLITS["standard"])
        assert len(places) == sum(kind == "where" for _, _, kind in spans)
        for key, row, column in places:
            start, end, kind = spans[[position for position, _, _ in keys].index(key)]
            answer = task_tokenizer.decode(ids[start : end - 1]).strip()  # without its </s>
            assert kind == "where" and answer == ("center" if (row, column) == (1, 1) else f"{ROWS[row]} {COLUMNS[column]}")
            assert task_tokenizer.id_to_piece(ids[key]) in {"▁" + shape for shape in SHAPES}  # 'circle' of 'Where is the red circle?'
            checked += 1


def read_out_setup(tokenizer, seed: int, wanted):
    """-> (config, an untrained model (seed 0) with the training attention, the first small-canvas conversation of
    `random.Random(seed)` whose AnswerTargets satisfy `wanted`): what the read-out tests run `batch_loss` on."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic.train import TRAINING_ATTENTION, WARMUP_SPLIT

    torch.manual_seed(0)
    config = default_config(tokenizer)
    model = TokenPackerForCausalLM(config)
    model.set_attn_implementation(TRAINING_ATTENTION)
    maker, rng = ExampleMaker(tokenizer, config, max_turns=8), random.Random(seed)
    example = maker(rng, WARMUP_SPLIT)
    while not wanted(example[2]):
        example = maker(rng, WARMUP_SPLIT)
    return config, model, example


def test_counting_questions_carry_their_answer_at_their_key_word(task_tokenizer):
    """Each counting question of a training conversation gives (its key word's position, the answer n): what the
    count read-out (`WhereHead(counts=True)`) reads at the key word."""
    maker = ExampleMaker(task_tokenizer, default_config(task_tokenizer), max_turns=8)
    rng, checked = random.Random(6), set()
    while checked != {"count", "count_shape"}:
        _, ids, taught, _ = maker(rng, SPLITS["standard"])
        spans, keys, tallies = taught.spans, taught.keys, taught.tallies
        assert len(tallies) == sum(kind in ("count", "count_shape") for _, _, kind in spans)
        for key, n in tallies:
            start, end, kind = spans[[position for position, _, _ in keys].index(key)]
            assert task_tokenizer.decode(ids[start : end - 1]).strip() == str(n)  # the answer without its </s>
            piece = task_tokenizer.id_to_piece(ids[key])  # 'objects' / the first piece of 'circles' ('▁circle')
            words = ["▁objects"] if kind == "count" else [f"▁{shape}s" for shape in SHAPES]
            assert any(word.startswith(piece) and len(piece) >= len(word) - 1 for word in words)
            checked.add(kind)


def test_the_count_read_out_adds_its_cross_entropy_to_the_read_out_term(task_tokenizer):
    """`WhereHead(counts=True)` adds to `batch_loss`'s read-out term the cross-entropy of each counting answer read
    from its key word's state after layer KEY_LAYER (recomputed here from that layer's output); its `where` part is
    a plain WhereHead's (same initial weights: the count layer is made last)."""
    import torch.nn.functional as F

    from tokenpacker.synthetic.train import KEY_LAYER, MAX_COUNT, WhereHead, batch_loss

    config, model, example = read_out_setup(task_tokenizer, 3, lambda taught: taught.places and taught.tallies)
    examples = [example]  # a conversation with a `where` and a counting question
    width = config.text_config.hidden_size
    torch.manual_seed(1)
    plain = WhereHead(width)
    torch.manual_seed(1)
    counting = WhereHead(width, counts=True)
    assert counting.counts.out_features == MAX_COUNT + 1 == 6
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), counting.state_dict().values()))
    where_only = batch_loss(model, None, examples, plain)[4]
    both = batch_loss(model, None, examples, counting)[4]
    hidden = {}
    hook = model.model.layers[KEY_LAYER].register_forward_hook(lambda m, i, o: hidden.update(h=o[0] if isinstance(o, tuple) else o))
    try:
        batch_loss(model, None, examples)
    finally:
        hook.remove()
    prepared, _, taught, _ = examples[0]
    with torch.no_grad():
        tokens = model.model.mm_projector(*model.model.vision_tower(prepared.pixel_values)).tokens
        shift = len(model.embed_visual_sequence(tokens, prepared.grid)) - 1  # the placeholder became the visual sequence
    positions = torch.tensor([key + shift for key, _ in taught.tallies])
    answers = torch.tensor([n for _, n in taught.tallies])
    by_hand = F.cross_entropy(counting.counts(hidden["h"][0, positions].float()), answers)
    assert by_hand.item() > 0 and len(taught.tallies) >= 1
    torch.testing.assert_close(both, where_only + by_hand, atol=1e-5, rtol=1e-5)


def test_the_where_read_out_can_read_a_head_of_its_own(task_tokenizer):
    """`WhereHead(head=WHERE_HEAD)` reads each `where` answer from that head's output at the key word in layer
    KEY_LAYER (o_proj's input, recomputed here), and `batch_loss` then also teaches that head the `where` key words'
    attention targets: a term of its own in the attention loss, its mass logged under (KEY_LAYER, WHERE_HEAD)."""
    import torch.nn.functional as F

    from tokenpacker.synthetic.train import KEY_LAYER, WHERE_HEAD, WhereHead, batch_loss

    config, model, example = read_out_setup(task_tokenizer, 3, lambda taught: len(taught.places) >= 1)
    size = config.text_config.hidden_size // config.text_config.num_attention_heads
    own, plain = WhereHead(size, head=WHERE_HEAD), WhereHead(config.text_config.hidden_size)
    heads_in = {}
    o_proj = model.model.layers[KEY_LAYER].self_attn.o_proj
    hook = o_proj.register_forward_pre_hook(lambda m, args: heads_in.update(x=args[0]))
    try:
        _, _, _, own_attention, own_where, masses, _ = batch_loss(model, None, [example], own)
    finally:
        hook.remove()
    _, _, _, plain_attention, _, plain_masses, _ = batch_loss(model, None, [example], plain)
    prepared, _, taught, _ = example
    with torch.no_grad():
        tokens = model.model.mm_projector(*model.model.vision_tower(prepared.pixel_values)).tokens
        shift = len(model.embed_visual_sequence(tokens, prepared.grid)) - 1
    positions = torch.tensor([key + shift for key, _, _ in taught.places])
    read = heads_in["x"][0, positions, WHERE_HEAD * size : (WHERE_HEAD + 1) * size]  # (Q, size): the head's output
    rows, columns = torch.tensor([r for _, r, _ in taught.places]), torch.tensor([c for _, _, c in taught.places])
    by_hand = F.cross_entropy(own.rows(read.float()), rows) + F.cross_entropy(own.columns(read.float()), columns)
    torch.testing.assert_close(own_where, by_hand, atol=1e-5, rtol=1e-5)
    assert 0 < masses[(KEY_LAYER, WHERE_HEAD)] < 1 and (KEY_LAYER, WHERE_HEAD) not in plain_masses
    assert own_attention.item() > plain_attention.item()  # head 0's terms are the same, plus the own head's
    assert masses[KEY_LAYER] == plain_masses[KEY_LAYER]


def test_with_a_head_of_its_own_the_count_read_out_reads_the_count_head(task_tokenizer):
    """`WhereHead(head=WHERE_HEAD, counts=True)` reads each counting answer from the count head's output (layer
    KEY_LAYER's head COUNT_HEAD, o_proj's input, recomputed here) at the counting key word, not from the key word's
    hidden state; its `where` part is the same head's read-out as without `counts`. `train` asks for `count_head`."""
    import torch.nn.functional as F

    from tokenpacker.synthetic.train import COUNT_HEAD, KEY_LAYER, WHERE_HEAD, WhereHead, batch_loss, train

    config, model, example = read_out_setup(task_tokenizer, 3, lambda taught: taught.places and taught.tallies)
    size = config.text_config.hidden_size // config.text_config.num_attention_heads
    torch.manual_seed(1)
    where_only = WhereHead(size, head=WHERE_HEAD)
    torch.manual_seed(1)
    counting = WhereHead(size, counts=True, head=WHERE_HEAD)
    assert counting.counts.in_features == size
    heads_in = {}
    o_proj = model.model.layers[KEY_LAYER].self_attn.o_proj
    hook = o_proj.register_forward_pre_hook(lambda m, args: heads_in.update(x=args[0]))
    try:
        both = batch_loss(model, None, [example], counting)[4]
    finally:
        hook.remove()
    plain = batch_loss(model, None, [example], where_only)[4]
    prepared, _, taught, _ = example
    with torch.no_grad():
        tokens = model.model.mm_projector(*model.model.vision_tower(prepared.pixel_values)).tokens
        shift = len(model.embed_visual_sequence(tokens, prepared.grid)) - 1
    positions = torch.tensor([key + shift for key, _ in taught.tallies])
    answers = torch.tensor([n for _, n in taught.tallies])
    read = heads_in["x"][0, positions, COUNT_HEAD * size : (COUNT_HEAD + 1) * size]  # (Q, size): the count head's output
    by_hand = F.cross_entropy(counting.counts(read.float()), answers)
    assert by_hand.item() > 0
    torch.testing.assert_close(both, plain + by_hand, atol=1e-5, rtol=1e-5)
    other = heads_in["x"][0, positions, WHERE_HEAD * size : (WHERE_HEAD + 1) * size]  # another head gives another loss
    assert abs(F.cross_entropy(counting.counts(other.float()), answers).item() - by_hand.item()) > 1e-4
    with pytest.raises(ValueError, match="needs count_head"):
        train(Path("unused"), count_readout=True, where_own_head=True)


def test_colour_links_tie_the_shape_word_to_its_colour_word(task_tokenizer):
    """With `colour_link`, each `where`/`exists` question gives (its key word, the colour word's last piece), and
    `batch_loss` supervises head 0 of layer COLOUR_LINK_LAYER there (its mass logged), or with `link_head` that head;
    without, no links and the losses are the same as before."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic.train import COLOUR_LINK_LAYER, TRAINING_ATTENTION, batch_loss, train

    config = default_config(task_tokenizer)
    plain, linked = (ExampleMaker(task_tokenizer, config, max_turns=8, colour_link=flag) for flag in (False, True))
    examples, checked = [], 0
    for seed in range(4):
        example, same = linked(random.Random(seed), SPLITS["standard"]), plain(random.Random(seed), SPLITS["standard"])
        _, ids, (spans, keys, _, _, links, *_), _ = example
        plain_targets, linked_targets = same[2], example[2]
        assert same[1] == ids and plain_targets.links == [] and linked_targets.links == links
        for field in ("spans", "rows", "places"):  # the flag adds links, nothing else
            assert getattr(plain_targets, field) == getattr(linked_targets, field)
        assert [k[:2] for k in plain_targets.keys] == [k[:2] for k in keys]
        linked_keys = [position for (position, _, _), (_, _, kind) in zip(keys, spans) if kind in ("where", "exists")]
        assert [key for key, _ in links] == linked_keys
        for key, colour in links:
            assert task_tokenizer.id_to_piece(ids[key]) in {"▁" + shape for shape in SHAPES}
            words = task_tokenizer.decode(ids[colour - 3 : key + 1]).split()
            assert words[-2] in COLORS and task_tokenizer.decode(ids[colour : key]).strip() in words[-2]
            checked += 1
        examples.append((example, same))
    assert checked >= 4
    torch.manual_seed(0)
    model = TokenPackerForCausalLM(config).eval()
    model.set_attn_implementation(TRAINING_ATTENTION)
    with torch.no_grad():
        with_links = batch_loss(model, None, [linked for linked, _ in examples])
        without = batch_loss(model, None, [same for _, same in examples])
    assert COLOUR_LINK_LAYER in with_links[5] and COLOUR_LINK_LAYER not in without[5]
    assert 0 < with_links[5][COLOUR_LINK_LAYER] < 1 and with_links[3] > without[3]
    assert with_links[5]["link"] == with_links[5][COLOUR_LINK_LAYER] and np.isnan(without[5]["link"])
    for i in (0, 1, 4):  # answer, key-word and where terms: untouched
        torch.testing.assert_close(with_links[i], without[i])
    # `link_head`: the same links taught to another head of the layer; head 0's mass is no longer asked for
    with torch.no_grad():
        head_1 = batch_loss(model, None, [linked for linked, _ in examples], link_head=1)
    assert (COLOUR_LINK_LAYER, 1) in head_1[5] and COLOUR_LINK_LAYER not in head_1[5]
    assert head_1[5]["link"] == head_1[5][(COLOUR_LINK_LAYER, 1)] != with_links[5]["link"]
    assert head_1[3] != with_links[3]
    for i in (0, 1, 4):
        torch.testing.assert_close(head_1[i], without[i])
    with pytest.raises(ValueError, match="needs colour_link"):
        train(Path("unused"), colour_link=False, link_head=1)


def where_batch(task_tokenizer):
    """-> (a random model ready for `batch_loss`, two or more warm-up conversations with two or more `where` questions)."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic import train as T

    torch.manual_seed(0)
    config = default_config(task_tokenizer)
    model = TokenPackerForCausalLM(config).eval()
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    maker, rng, examples = ExampleMaker(task_tokenizer, config, max_turns=8), random.Random(6), []
    while sum(len(e[2].places) for e in examples) < 2 or len(examples) < 2:
        examples.append(maker(rng, T.WARMUP_SPLIT))
    return model, examples


def test_the_where_key_words_attention_loss_can_weigh_more(task_tokenizer, monkeypatch):
    """`batch_loss(..., where_attention=W)`: in layer KEY_LAYER the `where` key words' rows of the attention-mass
    loss weigh W, the others 1 (the sum over rows divided by their count: W = 1 is the plain mean, bit for bit);
    nothing else changes; their own mean mass comes back as masses["where"]."""
    from tokenpacker.synthetic import train as T

    model, examples = where_batch(task_tokenizer)
    calls, original = [], T.attention_mass_loss
    monkeypatch.setattr(T, "attention_mass_loss", lambda *args: calls.append(args) or original(*args))
    with torch.no_grad():
        plain = T.batch_loss(model, None, examples)
        same = T.batch_loss(model, None, examples, where_attention=1.0)
        calls.clear()
        heavy = T.batch_loss(model, None, examples, where_attention=3.0)
    for a, b in zip(plain[:5], same[:5]):
        assert torch.equal(a, b)
    log_probs, targets, weights, spread = calls[0]  # layers in dict order, those with rows: KEY_LAYER, ANSWER_LAYER (no links)
    assert len(targets) == sum(len(e[2].keys) for e in examples)
    where = weights == 3.0
    assert where.sum().item() == sum(len(e[2].places) for e in examples) and bool(((weights == 1.0) | where).all())
    masses = torch.stack([log_probs[i, torch.as_tensor(t)].logsumexp(-1).exp() for i, t in enumerate(targets)])
    expected = 2 * -masses[where].log().sum() / len(targets)  # the where rows count twice more
    torch.testing.assert_close(heavy[3] - plain[3], expected, atol=1e-5, rtol=1e-4)
    assert heavy[5]["where"] == pytest.approx(masses[where].mean().item(), abs=1e-6)
    assert heavy[5][T.KEY_LAYER] == plain[5][T.KEY_LAYER]
    for i in (0, 1, 2, 4):  # answer, key-word, dense-probe and where read-out terms: untouched
        torch.testing.assert_close(heavy[i], plain[i])


def test_the_where_answers_can_weigh_more_in_the_answer_loss(task_tokenizer):
    """`batch_loss(..., where_answer=W)`: each `where` answer's tokens and its </s> weigh W in the answer loss, the
    other labelled tokens 1, over the count of labelled tokens (W = 1 is the plain mean, bit for bit); the other
    terms and the scores are untouched. Checked against the per-token cross-entropy computed here from the logits."""
    import torch.nn.functional as F

    from tokenpacker.synthetic import train as T

    model, examples = where_batch(task_tokenizer)
    assert any(kind != "where" for e in examples for *_, kind in e[2].spans)  # both kinds of answer in the batch
    captured = {}
    hook = model.lm_head.register_forward_hook(lambda module, inputs, output: captured.update(logits=output))
    with torch.no_grad():
        plain = T.batch_loss(model, None, examples)
        same = T.batch_loss(model, None, examples, where_answer=1.0)
        heavy = T.batch_loss(model, None, examples, where_answer=4.0)
    hook.remove()
    for a, b in zip(plain[:5], same[:5]):
        assert torch.equal(a, b)
    for i in (1, 2, 3, 4):  # key-word, dense-probe, attention and where read-out terms: untouched
        torch.testing.assert_close(heavy[i], plain[i])
    assert heavy[6] == plain[6]
    logits = captured["logits"].float()  # (B, T, V), the last forward's (the batch is padded the same each time)
    # Each answer's label positions, rebuilt from the prompt ids as batch_loss places them: the visual embeddings
    # replace the image placeholder, so a conversation's positions shift by (its visual length - 1).
    ce = []  # (per-token cross-entropy, is a `where` answer's token)
    for row, (prepared, ids, taught, _) in enumerate(examples):
        shift = model.embed_visual_sequence(
            model.model.mm_projector(*model.model.vision_tower(prepared.pixel_values)).tokens, prepared.grid
        ).shape[0] - 1
        for start, end, kind in taught.spans:
            for position in range(start, end):
                target = torch.tensor(ids[position])
                ce.append((F.cross_entropy(logits[row, position + shift - 1], target), kind == "where"))
    plain_expected = torch.stack([c for c, _ in ce]).mean()
    heavy_expected = torch.stack([c * (4.0 if where else 1.0) for c, where in ce]).sum() / len(ce)
    torch.testing.assert_close(plain[0], plain_expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(heavy[0], heavy_expected, atol=1e-5, rtol=1e-4)
    assert heavy[0] > plain[0]


def test_the_where_answer_weight_reaches_stage_2s_first_steps_only(task_tokenizer, monkeypatch):
    """`train_mllm` passes `weights["where_answer"]` to `batch_loss` for steps < `weights["where_answer_steps"]`, 1
    after them and without the keys (stage 3)."""
    from tokenpacker.synthetic import train as T

    seen = []

    def fake_batch_loss(model, token_head, examples, *args):
        seen.append(args[-1])
        zero = sum(p.sum() for p in model.parameters()) * 0
        return zero, zero, zero, zero, zero, {"link": np.nan}, []
    monkeypatch.setattr(T, "batch_loss", fake_batch_loss)
    torch.manual_seed(0)
    model = T.TokenPackerForCausalLM(default_config(task_tokenizer))
    maker = lambda rng, split: None
    weights = dict(key=1.0, patch=0.0, attention=0.5, where=0.0)
    T.train_mllm(model, None, maker, random.Random(0), 5, 1e-4, 1, lambda step: None,
                 weights | dict(where_answer=3.0, where_answer_steps=2), 100, "step", lambda: None, 100)  # fmt: skip
    T.train_mllm(model, None, maker, random.Random(0), 2, 1e-4, 1, lambda step: None, weights, 100, "step",
                 lambda: None, 100)  # fmt: skip
    assert seen == [3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_the_where_read_out_trains_the_layers_up_to_the_retrieval_only(task_tokenizer):
    """`batch_loss`'s `where` term reads the key word's hidden state after layer KEY_LAYER: its gradient reaches
    that layer and the ones below, not the layers above; without a WhereHead the term is 0."""
    from tokenpacker.synthetic.train import KEY_LAYER, WhereHead, batch_loss

    config, model, example = read_out_setup(task_tokenizer, 2, lambda taught: taught.places)
    examples = [example]  # a conversation with a `where` question
    assert batch_loss(model, None, examples)[4].item() == 0
    where_loss = batch_loss(model, None, examples, WhereHead(config.text_config.hidden_size))[4]
    assert where_loss.item() > 0
    where_loss.backward()
    grad = lambda layer: sum(p.grad.abs().sum().item() for p in model.model.layers[layer].parameters() if p.grad is not None)
    assert all(grad(layer) > 0 for layer in range(KEY_LAYER + 1))
    assert all(grad(layer) == 0 for layer in range(KEY_LAYER + 1, config.text_config.num_hidden_layers))


def test_the_where_read_out_starts_at_its_step(task_tokenizer):
    """`train_mllm`'s `where_start`: before that step the `where` term is left out of the loss, so the WhereHead
    stays as initialised and the model trains exactly as without a WhereHead; from it on, the head trains."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic.train import TRAINING_ATTENTION, WARMUP_SPLIT, WhereHead, train_mllm

    config = default_config(task_tokenizer)
    maker = ExampleMaker(task_tokenizer, config, max_turns=8)

    def run(where_start: int, with_head: bool = True):
        torch.manual_seed(0)
        model = TokenPackerForCausalLM(config).train()
        model.model.vision_tower.requires_grad_(False)
        model.set_attn_implementation(TRAINING_ATTENTION)
        head = WhereHead(config.text_config.hidden_size) if with_head else None
        initial = {k: v.clone() for k, v in head.state_dict().items()} if with_head else {}
        weights = dict(key=1.0, patch=0.0, attention=0.5, where=1.0)
        train_mllm(model, None, maker, random.Random(3), 2, 8e-4, 2, lambda step: WARMUP_SPLIT, weights, log_every=1,
                   tag="step", save=lambda: None, save_every=100, where_head=head, where_start=where_start)  # fmt: skip
        moved = with_head and any(not torch.equal(initial[k], v) for k, v in head.state_dict().items())
        return model.state_dict(), moved

    late, late_moved = run(where_start=2)  # both steps before the start
    without, _ = run(where_start=0, with_head=False)
    started, started_moved = run(where_start=1)
    assert not late_moved and started_moved
    assert all(torch.equal(late[k], without[k]) for k in late)
    assert any(not torch.equal(late[k], started[k]) for k in late)


def test_the_towers_position_embedding_can_start_as_a_2d_sine_cosine_table():
    from tokenpacker.synthetic.train import sincos_position_embedding

    table = sincos_position_embedding(24, 64)  # class token + the 24 x 24 patches
    assert table.shape == (577, 64) and torch.equal(table[0], torch.zeros(64))
    torch.testing.assert_close(table[1:].norm(dim=1), torch.full((576,), 32**0.5))
    same_row, same_column = table[1 + 3 * 24 + 5], table[1 + 3 * 24 + 9]  # row 3, columns 5 and 9
    torch.testing.assert_close(same_row[:32], same_column[:32])  # the first half says the row
    assert not torch.allclose(same_row[32:], same_column[32:])


def test_a_point_token_takes_the_cell_of_its_objects_centre_patch(task_tokenizer):
    """A point token whose region straddles a border of the 3 x 3 cells takes the cell of the patch holding an
    object's centre (what `where` asks), else of its region's first patch; tiles and padding have none."""
    from tokenpacker.image_processing import ImageProcessor
    from tokenpacker.synthetic.train import token_labels

    config = default_config(task_tokenizer)
    circle = SceneObject("circle", "green", 200, 230, 40)  # just below the first row of cells (672 / 3 = 224)
    scene = Scene(1008, 672, (240, 240, 240), 0.0, [circle], seed=0)
    prepared = ImageProcessor(config)(scene.render())
    labels = patch_labels(scene, prepared.views, config.raw_grid)
    g = next(v.index for v in prepared.views if v.kind == "global")  # 1008 x 672 -> 336 x 224: 3 px per view px
    # (200, 230) -> view (66.7, 76.7): patch (row 5, column 4), in token (2, 2) with patch row 4 (cell row 0)
    assert labels[g, 2, 5, 4] == 1 and labels[g, 3, 5, 4] == 3 and labels[g, 3, 4, 4] == 0
    tokens = token_labels(labels, config.scale_factor)  # (V, 4, G, G)
    assert tokens.shape == (len(prepared.views), 4, 12, 12)
    assert tokens[g, 3, 2, 2] == 3 and tokens[g, 2, 2, 2] == 1  # middle left, where the circle's centre is
    assert tokens[g, 3, 1, 2] == 0 and tokens[g, 3, 11, 11] == -1  # the first patch's cell; padding below the image
    assert (tokens[[v.index for v in prepared.views if v.kind != "global"], 3] == -1).all()
    assert tokens[g, 0, 2, 2] == 1 + list(COLORS).index("green")
    torch.testing.assert_close(tokens[:, :3], torch.nn.functional.max_pool2d(labels[:, :3].float(), 2).long())


def test_balanced_step_gives_each_loss_the_same_gradient_norm():
    """Stage 1b's update with the cell: the sum of each loss's gradient scaled to norm 1, whatever its scale."""
    from tokenpacker.synthetic.train import balanced_step

    w = torch.nn.Parameter(torch.zeros(3))
    a, b = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 0.0, 0.5])
    optimizer = torch.optim.SGD([w], lr=1.0)
    balanced_step(optimizer, [w], [100 * (w @ a), w @ b], lr=0.1)
    torch.testing.assert_close(w.detach(), -0.1 * torch.tensor([0.6, 0.8, 1.0]))


def test_token_head_losses_by_name_and_the_cell_on_object_tokens_only():
    from tokenpacker.synthetic.train import TokenHead

    torch.manual_seed(0)
    plain = TokenHead(8, 2)
    torch.manual_seed(0)
    head = TokenHead(8, 2, cells=True)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), head.parameters()))  # the cell head comes last
    tokens = torch.randn(1, 4, 8)  # a 4 x 4-patch view -> 2 x 2 point tokens
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    labels[0, 3] = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [3, 3, 4, 4], [3, 3, 4, 4]])  # cells per patch
    labels[0, 0, 2:, 2:], labels[0, 1, 2:, 2:], labels[0, 2, 2, 2] = 2, 3, 1  # an object in the last token's region
    losses = head.losses(tokens, labels)
    assert list(losses) == ["colour", "shape", "centre", "cell"] and list(plain.losses(tokens, labels)) == list(losses)[:3]
    torch.testing.assert_close(head.loss(tokens, labels), sum(losses.values()))
    torch.testing.assert_close(plain.loss(tokens, labels), losses["colour"] + losses["shape"] + losses["centre"])
    expected_cell = torch.nn.functional.cross_entropy(head.cells(tokens[0, 3:]), torch.tensor([4]))
    torch.testing.assert_close(losses["cell"], expected_cell)
    colour_without_background = torch.nn.functional.cross_entropy(head.colors(tokens[0, 3:]), torch.tensor([2]))
    torch.testing.assert_close(head.losses(tokens, labels, background=0.0)["colour"], colour_without_background)
    colour, shape, cell = head.accuracy(tokens, labels)
    assert cell == float(head.cells(tokens[0, 3]).argmax() == 4) and np.isnan(plain.accuracy(tokens, labels)[2])
    expected_centre = torch.nn.functional.cross_entropy(head.centres(tokens[0]), torch.tensor([0, 0, 0, 1]))
    torch.testing.assert_close(losses["centre"], expected_centre)
    head.mark_weight = 4.0  # `--mark-weight`: the centre term alone scales, the others stay as they were
    weighted = head.losses(tokens, labels)
    torch.testing.assert_close(weighted["centre"], 4 * expected_centre)
    assert all(torch.equal(weighted[k], losses[k]) for k in ("colour", "shape", "cell"))


def test_stage_1b_mark_steps_train_the_mark_alone_then_keep_it_beside_colour(task_tokenizer, capsys):
    """`pretrain_projector(mark_steps=2)`: two steps on the mark term alone (of the probe, only the centre read-out
    moves), then colour's steps with the mark beside it, then the recipe's sum (the cell from `cell_start` steps
    after the mark's); the balanced stage 1b refuses it."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic.train import ExampleMaker, TokenHead, default_config, pretrain_projector

    config = default_config(task_tokenizer)
    torch.manual_seed(0)
    model, make = TokenPackerForCausalLM(config), ExampleMaker(task_tokenizer, config)
    moved = {}
    for steps in (0, 1):
        head = TokenHead(config.text_config.hidden_size, config.scale_factor, cells=True)
        before = {name: p.detach().clone() for name, p in head.named_parameters()}
        pretrain_projector(model, head, make, random.Random(0), steps=steps, color_steps=1, batch_size=1, lr=1e-3,
                           log_every=1, cell_start=1, mark_steps=2)  # fmt: skip
        moved[steps] = {name.split(".")[0] for name, p in head.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {0: {"centres"}, 1: {"centres", "colors"}}
    log = capsys.readouterr().out
    assert "projector step 2/2 (mark only)" in log and "projector step 3/3 (colour and mark)" in log
    with pytest.raises(ValueError, match="plain sum only"):
        pretrain_projector(model, TokenHead(config.text_config.hidden_size, config.scale_factor, cells=True), make,
                           random.Random(0), steps=1, color_steps=1, batch_size=1, lr=1e-3, log_every=1, mark_steps=1)


def test_stage_1c_draws_small_objects_only_and_trains_its_fresh_head_alone_first(task_tokenizer, capsys):
    """`pretrain_vision(split=SMALL_OBJECTS_SPLIT, head_steps=1)` (stage 1c): every scene from the split, the
    tower untouched in the head's step alone and moved by the next, all four terms from the start."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic.train import SMALL_OBJECTS_SPLIT, ExampleMaker, PatchHead, default_config, pretrain_vision

    config = default_config(task_tokenizer)
    torch.manual_seed(0)
    model, make = TokenPackerForCausalLM(config), ExampleMaker(task_tokenizer, config)
    drawn = []
    views_and_labels = make.views_and_labels
    make.views_and_labels = lambda rng, split: drawn.append(split) or views_and_labels(rng, split)
    tower = model.model.vision_tower
    moved = {}
    for steps in (1, 2):
        head = PatchHead(config.vision_config.hidden_size * len(config.mm_vision_feature_layers), cells=True)
        state = {k: v.clone() for k, v in tower.state_dict().items()}
        before = [p.detach().clone() for p in tower.parameters()]
        heads = {name: p.detach().clone() for name, p in head.named_parameters()}
        pretrain_vision(model, head, make, random.Random(0), steps, 0, batch_size=2, lr=1e-3, log_every=1,
                        cell_start=0, split=SMALL_OBJECTS_SPLIT, head_steps=1, name="small-object")  # fmt: skip
        moved[steps] = (any(not torch.equal(p, b) for p, b in zip(tower.parameters(), before)),
                        {name.split(".")[0] for name, p in head.named_parameters() if not torch.equal(p, heads[name])})
        tower.load_state_dict(state)  # each arm from the same tower
    assert moved == {1: (False, {"colors", "shapes", "centres", "cells"}), 2: (True, {"colors", "shapes", "centres", "cells"})}
    assert len(drawn) == 6 and all(split is SMALL_OBJECTS_SPLIT for split in drawn)
    log = capsys.readouterr().out
    assert "small-object step 1/1 (head only)" in log and "small-object step 2/2  patch loss" in log


def test_a_wider_tower_feeds_the_same_point_tokens(task_tokenizer):
    """`default_config(vision_width=96)`: the tower's width and MLP follow it, and the projector, reading its four
    levels, still makes 12 x 12 point tokens of the LLM's width from a 336 px view."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic.train import default_config

    config = default_config(task_tokenizer, vision_width=96)
    assert (config.vision_config.hidden_size, config.vision_config.intermediate_size) == (96, 288)
    model = TokenPackerForCausalLM(config).eval()
    with torch.no_grad():
        features, multi_level = model.model.vision_tower(torch.zeros(1, 3, 336, 336))
        tokens = model.model.mm_projector(features, multi_level).tokens
    assert multi_level.shape == (1, 576, 4 * 96) and tokens.shape == (1, 144, config.text_config.hidden_size)


def test_stage_1c_follows_its_options_and_refuses_a_tower_that_has_had_it(tmp_path, monkeypatch):
    """`train(small_object_steps=3, small_object_head_steps=1, small_object_shape_steps=2)` runs stage 1, then stage
    1c with those counts on `SMALL_OBJECTS_SPLIT` and a fresh head; `tower_from` stands in for stage 1 only: a tower
    already through stage 1c would get it twice, and a tower of another width is refused with the width to give."""
    import tokenpacker.synthetic.train as T
    from tokenpacker.synthetic.train import train

    calls = []
    real = T.pretrain_vision
    monkeypatch.setattr(T, "pretrain_vision", lambda model, head, make, rng, steps, shape_steps, **kw: calls.append(
        (head, steps, shape_steps, kw.get("split"), kw.get("head_steps", 0))))  # fmt: skip
    train(tmp_path / "options", **TINY_RECIPE | {"steps": 0, "projector_steps": 0}, polish_steps=0, small_object_steps=3,
          small_object_head_steps=1, small_object_shape_steps=2)  # fmt: skip
    (head1, *stage1), (head1c, *stage1c) = calls
    assert stage1 == [2, 1, None, 0] and stage1c == [3, 2, T.SMALL_OBJECTS_SPLIT, 1] and head1c is not head1
    monkeypatch.setattr(T, "pretrain_vision", real)
    train(tmp_path / "a", **TINY_RECIPE | {"steps": 0, "projector_steps": 0}, polish_steps=0, small_object_steps=2,
          small_object_head_steps=1)  # fmt: skip
    summary = json.loads((tmp_path / "a" / "training.json").read_text())
    assert (summary["small_object_steps"], summary["small_object_head_steps"]) == (2, 1)
    with pytest.raises(ValueError, match="has had stage 1c already"):
        train(tmp_path / "b", **TINY_RECIPE, polish_steps=0, tower_from=tmp_path / "a", small_object_steps=2)
    with pytest.raises(ValueError, match="tower is 64 wide and this run's 32: give --vision-width 64"):
        train(tmp_path / "c", **TINY_RECIPE, polish_steps=0, tower_from=tmp_path / "a", vision_width=32)


def test_branch_questions_keep_each_types_quota_and_balance_exists():
    from tokenpacker.synthetic.train import BRANCH_QUOTA, branch_questions

    rng = random.Random(0)
    for _ in range(30):
        scene = random_scene(rng)
        chosen = branch_questions(scene, rng, BRANCH_QUOTA)
        answerable = {(kind, question, answer) for kind, question, answer, _ in questions(scene)}
        assert set(chosen) <= answerable and len(set(chosen)) == len(chosen)
        for kind in QUESTION_TYPES:
            pool = [q for q in answerable if q[0] == kind]
            assert sum(q[0] == kind for q in chosen) == min(BRANCH_QUOTA[kind], len(pool))
        answers = [answer for kind, _, answer in chosen if kind == "exists"]
        yes, no = (sum(q[0] == "exists" and q[2] == word for q in answerable) for word in ("yes", "no"))
        assert answers.count("yes") == min(yes, max(2, BRANCH_QUOTA["exists"] - no))  # half yes where the scene allows


def test_branch_attention_shows_each_branch_the_prefix_and_itself():
    from tokenpacker.synthetic.train import branch_attention

    # row 0: prefix of 3, branches [3, 5) and [5, 6), then 2 padding; row 1: one causal sequence of 4, 4 padding
    mask, positions = branch_attention([(6, [(3, 5), (5, 6)]), (4, [])], 8)
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 1, 0, 0],  # the second branch does not see the first
        [0, 0, 0, 0, 0, 0, 1, 0],  # padding sees itself only
        [0, 0, 0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)  # fmt: skip
    assert mask.shape == (2, 1, 8, 8) and torch.equal(mask[0, 0], expected)
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 3, 6, 7]  # each branch continues the prefix's positions
    assert torch.equal(mask[1, 0, :4, :4], torch.ones(4, 4, dtype=torch.bool).tril()) and positions[1].tolist() == list(range(8))


def test_per_row_attention_is_the_branch_masks_attention():
    """Row by row (causal prefix, masked branches on the used keys, zeros at the padding) gives one masked SDPA
    call's output at every real token."""
    from tokenpacker.synthetic.train import branch_attention, per_row_attention

    torch.manual_seed(0)
    mask, _ = branch_attention([(6, [(3, 5), (5, 6)]), (4, [])], 8)
    query, key, value = (torch.randn(2, 2, 8, 4) for _ in range(3))  # (B, heads, T, head size)
    module = torch.nn.Module()
    module.is_causal = True
    rows = per_row_attention(module, query, key, value, mask, [(3, 6), (4, 4)])
    masked = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask).transpose(1, 2)  # (B, T, heads, size)
    assert rows.shape == masked.shape == (2, 8, 2, 4)
    torch.testing.assert_close(rows[0, :6], masked[0, :6])
    torch.testing.assert_close(rows[1, :4], masked[1, :4])
    assert not rows[0, 6:].any() and not rows[1, 4:].any()


def test_a_branched_batch_gives_the_same_losses_and_gradients_row_by_row(task_tokenizer):
    """`batch_loss(per_row=True)` on a padded batch of branched scenes with different view counts: the masked call's
    losses, attention masses, scores and gradients, to float32 rounding."""
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic import train as T

    torch.manual_seed(0)
    config = default_config(task_tokenizer)
    model = TokenPackerForCausalLM(config).train()
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    maker = ExampleMaker(task_tokenizer, config, branches=T.BRANCH_QUOTA)
    examples = [maker(random.Random(seed), split) for seed, split in ((5, SPLITS["small"]), (6, T.WARMUP_SPLIT))]
    assert examples[0][0].pixel_values.shape[0] != examples[1][0].pixel_values.shape[0]  # padded, prefixes differ
    token_head = T.TokenHead(config.text_config.hidden_size, config.scale_factor)
    where_head = T.WhereHead(config.text_config.hidden_size // config.text_config.num_attention_heads, head=T.WHERE_HEAD)
    trained = [p for p in model.parameters() if p.requires_grad]

    def run(per_row):
        model.zero_grad(set_to_none=True)
        out = T.batch_loss(model, token_head, examples, where_head, 1.0, T.KEY_LAYER, 1, per_row=per_row)
        sum(out[:5]).backward()
        return out, torch.cat([p.grad.flatten() for p in trained if p.grad is not None])

    (masked, masked_grad), (rows, rows_grad) = run(False), run(True)
    for a, b in zip(rows[:5], masked[:5]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert rows[5].keys() == masked[5].keys() and all(
        rows[5][k] == pytest.approx(masked[5][k], rel=1e-5, nan_ok=True) for k in masked[5])
    assert rows[6] == masked[6]
    assert (rows_grad - masked_grad).norm() < 1e-5 * masked_grad.norm()


def test_each_branch_is_trained_as_its_own_single_turn_question(task_tokenizer):
    """A branched example: one prefix (system prompt, `USER:`, the image), then each question's own single-turn text
    after the image. `batch_loss` gives each branch what it gets alone: the same logits at every one of its tokens,
    the same attention at its key word, so the same answer loss, key-word loss and scores."""
    from tokenpacker.conversation import Turn, build_prompt
    from tokenpacker.modeling import TokenPackerForCausalLM
    from tokenpacker.synthetic import train as T

    torch.manual_seed(0)
    config = default_config(task_tokenizer)
    model = TokenPackerForCausalLM(config).eval()
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    maker = ExampleMaker(task_tokenizer, config, branches=T.BRANCH_QUOTA)
    prepared, ids, taught, labels = maker(random.Random(5), SPLITS["small"])
    at = ids.index(-200) + 1
    assert ids.count(-200) == 1 and len(taught.branches) == len(taught.spans) == len(taught.keys) == len(taught.rows) >= 6
    for (start, end), (answer_start, answer_end, kind), (key, _, _) in zip(taught.branches, taught.spans, taught.keys):
        text = task_tokenizer.decode(ids[start:end])
        question, answer = text.split(" ASSISTANT:")
        alone = task_tokenizer.encode_with_image(build_prompt([Turn(question.strip(), answer.strip())]))
        assert ids[:at] + ids[start:end] == alone  # the branch is the single-turn conversation's text after the image
        assert start < key < answer_start < answer_end == end
    with torch.no_grad():
        together = T.batch_loss(model, None, [(prepared, ids, taught, labels)])
        alone_losses, alone_scores, answer_tokens = [], [], []
        for i, (start, end) in enumerate(taught.branches):
            moved = lambda p: p - (start - at)  # noqa: E731
            s0, s1, kind = taught.spans[i]
            key, target, objects = taught.keys[i]
            query, _ = taught.rows[i]
            single = T.AnswerTargets([(moved(s0), moved(s1), kind)], [(moved(key), target, objects)],
                                     [(moved(query), moved(key))], [], [], (), (), ())  # fmt: skip
            out = T.batch_loss(model, None, [(prepared, ids[:at] + ids[start:end], single, labels)])
            alone_losses.append(out)
            alone_scores += out[6]
            answer_tokens.append(s1 - s0)
    expected_answer = sum(n * out[0] for n, out in zip(answer_tokens, alone_losses)) / sum(answer_tokens)
    expected_key = sum(out[1] for out in alone_losses) / len(alone_losses)
    expected_attention = sum(out[5][T.KEY_LAYER] for out in alone_losses) / len(alone_losses)
    torch.testing.assert_close(together[0], expected_answer, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[1], expected_key, atol=1e-5, rtol=1e-4)
    assert together[5][T.KEY_LAYER] == pytest.approx(expected_attention, rel=1e-4)
    assert together[6] == alone_scores


def test_the_command_line_defaults_are_the_recipes(monkeypatch):
    """`python -m tokenpacker.synthetic.train` with no options calls `train` with exactly its own defaults, which are
    the recipe the shipped checkpoint's training.json records (its tower taken from the checkpoint before it, which
    gives the same weights); 'off' turns the cell targets off, --no-colour-link the colour link."""
    import inspect

    from tokenpacker.synthetic import train as T

    signature, calls = inspect.signature(T.train), []
    monkeypatch.setattr(T, "train", lambda out, **options: calls.append((out, options)))
    T.main([])
    out, options = calls[-1]
    defaults = {name: p.default for name, p in signature.parameters.items() if name in options}
    assert out == Path("assets/default-model") and options == defaults and len(options) >= 30
    T.main(["--tower-cell-start", "off", "--token-cell-start", "off", "--no-branches", "--no-where-head"])
    assert {k: calls[-1][1][k] for k in ("tower_cell_start", "token_cell_start", "branches", "where_own_head")} == dict(
        tower_cell_start=None, token_cell_start=None, branches=False, where_own_head=False)
    T.main(["--no-colour-link", "--warmup-steps", "800"])  # run BB's recipe
    assert (calls[-1][1]["colour_link"], calls[-1][1]["link_head"], calls[-1][1]["warmup_steps"]) == (False, None, 800)
    T.main(["--object-shape-weight", "0.5", "--vision-width", "128"])
    assert (calls[-1][1]["object_shape_weight"], calls[-1][1]["vision_width"]) == (0.5, 128)

    shipped = json.loads((DEFAULT_MODEL / "training.json").read_text())
    recipe = defaults | {"link_head": 1, "branches": T.BRANCH_QUOTA}  # what `train` resolves None and True to
    newer = {"mark_weight": 1.0, "projector_mark_steps": 0, "per_row_attention": False,  # newer than BD: its code
             "where_answer_weight": 1.0, "where_answer_steps": 600, "balanced_shapes": False,
             "small_object_steps": 0, "small_object_head_steps": 100, "small_object_shape_steps": 0, "vision_width": 64,
             "object_shape_weight": 0.0}  # fmt: skip
    assert {k: recipe[k] for k in newer} == newer and not newer.keys() & shipped.keys()
    assert {k: shipped.get(k, newer.get(k)) for k in recipe if k not in ("tower_from", "resume_from")} == {
        k: v for k, v in recipe.items() if k not in ("tower_from", "resume_from")}
