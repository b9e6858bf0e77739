"""Train the embedded default model: a tiny TokenPacker-HD MLLM, from scratch, on synthetic scenes.

    python -m tokenpacker.synthetic.train --out assets/default-model [--steps N] [--seed S]

CLIP-style tower at 336 px / patch 14 (the real 24 x 24 grid and 336 px HD tiles), the TokenPacker
projector at s = 2 (144 tokens per view), a small LLaMA and a sentencepiece tokenizer; HD slice mode with
patch_num 9. Everything is seeded (scenes, their noise, the model's initialisation): the same command gives
the same checkpoint on the same machine. The defaults are run BD's recipe (experiments/link-full-range/README.md),
which made the shipped checkpoint (assets/default-model/training.log): run BB's plus the colour link on layer 0's
head 1, and stage 2's full range from step 600 instead of 800. BD was trained on BB's tower (`--tower-from`) in
968 s (BB's stage 1) + 4208 s = 86 minutes on a slow day; a clean run of the bare command gave the same weights, byte
for byte, in 4574 s = 76 minutes on the project's 2-core CPU (experiments/link-full-range/run-bd-repro.txt). The
machine's speed varies by 10-20% from day to day (the earlier recipe run Q took 80 minutes on a fast day and about
92 on a slow one: experiments/speed/README.md).

Stage 1 teaches the tower dense patch features: shape alone first, through an MLP read-out; then colour and
object centre per patch as well. Stage 1b freezes the tower and teaches the projector to carry colour, then shape
and centres too, into its point tokens (a linear probe). Stage 2 trains the projector and the LLM on each scene's
questions, first on small canvases (few views), then on the task's full range of canvases, with three
auxiliary losses: the dense probe on the point tokens; the answer's first token predicted already at the
question's key word (intermediate supervision); and attention supervision, which teaches the retrieval instead
of waiting for it (the key word attends to the point tokens of the objects asked about, the answer to the key
word). Stage 3 polishes on the full range only, at a small learning rate (with `--no-branches`, on longer
conversations: 4-12 questions a scene instead of 1-8). `--tower-from CHECKPOINT` takes stage 1 from a
checkpoint of this recipe, `--resume-from CHECKPOINT` stages 1-2; either gives the same result as a full run.
The recipe has, since run AB (experiments/mark-and-readout), a training-only read-out of `where` answers at the key
word in stage 2 (`--where-weight 1`, from step `--where-start`), the tower's position embedding started as a 2-D
sine-cosine table (`--position-start sincos`; both from run R, experiments/where-readout) and each object counted by
its first patch in reading order (`--count-mark first`, run Z, experiments/first-mark). Since run BB
(experiments/branches) each scene's questions are trained as separate single-turn branches after one shared visual
prefix (`--branches`), the object's 3x3 cell is taught to the tower from stage 1's step 1000 and to the point tokens
from stage 1b's step 400 (`--tower-cell-start`, `--token-cell-start`; not in stage 2, `--no-token-cell-in-stage2`),
and the `where` read-out reads a head of its own (`--where-head`, run AG, experiments/where-head). Since run BD
(experiments/link-full-range) layer 0's head 1 is taught to bring each `where` / `exists` key word its colour word
(`--colour-link`, run BC). `--no-colour-link --warmup-steps 800` gives run BB's recipe, shipped before BD;
`--no-colour-link --no-branches --tower-cell-start off --token-cell-start off --no-where-head --warmup-steps 1400
--steps 1900 --polish-steps 250 --projector-steps 1000` run AB's, shipped before BB. The other options
(`--cell-target`, `--count-spread`, ...) are off by default: the runs that had them were not shipped."""

import argparse
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..configuration import IMAGE_TOKEN_INDEX, TokenPackerConfig
from ..conversation import SYSTEM_PROMPT, Turn, build_prompt
from ..image_processing import ImageProcessor
from ..layout import build_layout
from ..loading import load
from ..modeling import TokenPackerForCausalLM
from ..pipeline import TokenPackerPipeline
from ..tokenizer import LlamaTokenizer
from .scenes import COLORS, COLUMNS, QUESTION_TYPES, ROWS, SHAPES, SPLITS, questions, random_scene, sample_question

TRAIN_SEED = 1234


def tokenizer_corpus() -> list[str]:
    """Lines covering the template and the task's vocabulary."""
    lines = [SYSTEM_PROMPT, "USER: <image>", "ASSISTANT:", "</s>"]
    for shape in SHAPES:
        lines += [f"What color is the {shape}?", f"How many {shape}s are there?"]
        for color in COLORS:
            lines += [f"Is there a {color} {shape}?", f"Where is the {color} {shape}?", f"What shape is the {color} object?"]
    lines += ["How many objects are there?", "yes no", " ".join(str(d) for d in range(10))]
    lines += [f"{r} {c}" for r in ROWS for c in COLUMNS] + ["center"]
    return lines * 3


def default_config(tokenizer: LlamaTokenizer, vision_width: int = 64) -> TokenPackerConfig:
    """The recipe's model: a 4-layer CLIP-style tower of width `vision_width` (its MLP 3x that) at 336 px / patch
    14, TokenPacker's projector (s = 2, multi-level features of all four layers) and a 4-layer LLaMA of width 128."""
    return TokenPackerConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                         initializer_range=0.02, bos_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=vision_width, intermediate_size=3 * vision_width, num_hidden_layers=4,
                           num_attention_heads=4, image_size=336, patch_size=14, projection_dim=vision_width),
        scale_factor=2, mm_vision_select_layer=-2, mm_vision_feature_layers=[1, 2, 3, 4], mm_projector_num_heads=4,
        image_aspect_ratio="slice", patch_num=9,
        view_separator_token_id=tokenizer.convert_tokens_to_ids(","),
        row_separator_token_id=tokenizer.convert_tokens_to_ids("\n"),
    )  # fmt: skip


class AnswerTargets(NamedTuple):
    """What one conversation teaches besides the tower's dense labels. Positions are in the prompt's `ids`; sequence
    positions count the visual embeddings that replace the image placeholder."""

    spans: list  # per answer: (start, end, kind); the answer and its </s> are ids[start:end]
    keys: list  # per key word found: (its position, the answer's first informative token, the sequence positions
    #             it should attend to: its objects' point tokens, or <s> when there are none)
    rows: list  # per key word found: (the position predicting the answer's first informative token, the key word's)
    places: list  # per `where` question: (key word's position, the answer's row index in ROWS, column in COLUMNS)
    links: list  # per `where` / `exists` question, with `colour_link` only: (key word's position, the colour word's
    #              last piece's position), which layer COLOUR_LINK_LAYER's head (`batch_loss`'s link_head) is taught
    #              to attend to
    spread: tuple = ()  # with `count_spread`: the counting key words' positions, whose targets (<s> and one mark
    #                     token per object) are taught as an even spread of the attention, not as a mass
    counts: tuple = ()  # with `count_head`: per counting key word, (its position, <s> and its n marks' positions),
    #                    taught to head COUNT_HEAD (of `batch_loss`'s count_layer) as an even spread, 1/(n+1) each
    tallies: tuple = ()  # per counting question: (key word's position, the answer n), what a count read-out reads
    branches: tuple = ()  # with branches: per question its own single-turn text after the image, (start, end) in ids


class ExampleMaker:
    """Scene -> one training example: views, grid, token ids and the spans of the answers to learn.

    Several questions about one scene share one pass over the vision tower and the long visual prefix. With
    `branches` (per question type the most questions a scene is asked, `branch_questions`), each question is its
    own single-turn conversation after the shared prefix (`AnswerTargets.branches`, trained under
    `branch_attention`'s mask); min_turns and max_turns are then unused. Without, they go into one multi-turn
    conversation (as in LLaVA's training data): min_turns to max_turns draws, a question drawn twice asked once."""

    def __init__(self, tokenizer: LlamaTokenizer, config: TokenPackerConfig, max_turns: int = 6, min_turns: int = 1,
                 colour_link: bool = False, count_view: str = "tiles", count_mark: str = "centre",
                 count_spread: bool = False, count_head: bool = False, branches: dict[str, int] | None = None):  # fmt: skip
        if count_view not in ("tiles", "global"):
            raise ValueError(f"count_view must be 'tiles' or 'global', not {count_view!r}")
        if count_mark not in COUNT_MARKS:
            raise ValueError(f"count_mark must be one of {COUNT_MARKS}, not {count_mark!r}")
        self.tokenizer = tokenizer
        self.colour_link = colour_link  # emit `links` (see __call__)
        self.count_view = count_view  # where counting's key word is taught to find the centre tokens
        self.count_mark = count_mark  # which patch of an object is its one mark (`count_marks`)
        self.count_spread = count_spread  # counting's key word: 1/(n+1) of its attention on <s> and each of n marks
        self.count_head = count_head  # the same, taught to a head of its own (COUNT_HEAD), head 0's mass kept
        self.processor = ImageProcessor(config)
        self.min_turns, self.max_turns = min_turns, max_turns
        self.branches = branches  # per question type the most questions a scene is asked, each as its own branch
        self.grid = config.raw_grid
        self.point_grid = config.point_grid

    def views_and_labels(self, rng: random.Random, split: dict | None = None):
        scene = random_scene(rng, **(split or SPLITS["standard"]))
        prepared = self.processor(scene.render())
        return prepared.pixel_values, patch_labels(scene, prepared.views, self.grid, mark=self.count_mark)

    def __call__(self, rng: random.Random, split: dict):
        """-> (prepared image, prompt ids, AnswerTargets, dense labels) for one scene drawn from `split`."""
        scene = random_scene(rng, **split)
        if self.branches:
            asked = branch_questions(scene, rng, self.branches)
        else:
            asked = []
            for _ in range(rng.randint(self.min_turns, self.max_turns)):
                kind, question, answer, _ = sample_question(scene, rng, rng.choice(QUESTION_TYPES))
                if all(q != question for _, q, _ in asked):
                    asked.append((kind, question, answer))
        prepared = self.processor(scene.render())
        labels = patch_labels(scene, prepared.views, self.grid, mark=self.count_mark)
        turns = [Turn(question, answer) for _, question, answer in asked]
        if self.branches:
            ids, bounds, branches = self._branched(turns)
        else:
            ids, bounds, branches = self._multi_turn(turns)
        layout = build_layout(prepared.image_size, prepared.views, prepared.mode, prepared.grid, self.point_grid,
                              start=ids.index(IMAGE_TOKEN_INDEX))  # fmt: skip
        masks = token_masks(labels, prepared.views, self.point_grid)
        spans, keys, rows, places, links, spread, counts, tallies = [], [], [], [], [], [], [], []
        for (kind, question, answer), (earliest, start, end) in zip(asked, bounds):
            spans.append((start, end, kind))
            key = self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(key_word(kind, question))[0])
            found = [p for p in range(start - 1, earliest, -1) if ids[p] == key]
            # the answer's first informative token: a digit comes as '▁', '3', and the key word targets the '3'
            first = next(p for p in range(start, end) if self.tokenizer.id_to_piece(ids[p]) != "▁")
            if found:
                objects = layout.positions[attention_target(kind, question, answer, masks, layout, self.count_view)]
                if self.count_head and kind in ("count", "count_shape"):
                    # head 0 keeps its mass on the marks (it retrieves for every question type, so its keys carry
                    # colour and shape); head COUNT_HEAD is free to key on the mark alone and share evenly
                    counts.append((found[0], np.concatenate([[0], objects])))
                # <s> only when nothing is asked about: with <s> in every target set the head met the loss at once
                # (mass on target 0.94 after 75 steps) and the answers learned no better: it sank on <s>
                if self.count_spread and kind in ("count", "count_shape"):
                    # <s> and the n mark tokens, 1/(n+1) each: head 0's output is then v_<s>/(n+1) plus n/(n+1) of
                    # a mark's value, a vector that says n (a mass on the marks alone reads the same for every n)
                    objects = np.concatenate([[0], objects])
                    spread.append(found[0])
                keys.append((found[0], ids[first], objects if len(objects) else np.array([0])))
                rows.append((first - 1, found[0]))
                if kind == "where":
                    row, column = ("middle", "center") if answer == "center" else answer.split()
                    places.append((found[0], ROWS.index(row), COLUMNS.index(column)))
                if kind in ("count", "count_shape"):
                    tallies.append((found[0], int(answer)))
                if self.colour_link and kind in ("where", "exists"):  # '... red circle?': 'red' ends just before 'circle'
                    links.append((found[0], found[0] - 1))
        taught = AnswerTargets(spans, keys, rows, places, links, tuple(spread), tuple(counts), tuple(tallies), branches)
        return prepared, ids, taught, labels

    def _multi_turn(self, turns: list[Turn]):
        """One conversation of all the turns -> (ids, per turn (previous turn's end, answer start, answer end), ())."""
        ids = self.tokenizer.encode_with_image(build_prompt(turns))
        bounds, previous_end = [], 0
        for i, turn in enumerate(turns):  # each answer (and its </s>) extends its prompt's tokens
            start = len(self.tokenizer.encode_with_image(build_prompt(turns[:i] + [Turn(turn.question)])))
            end = len(self.tokenizer.encode_with_image(build_prompt(turns[: i + 1])))
            assert ids[:end] == self.tokenizer.encode_with_image(build_prompt(turns[: i + 1])), "prefix mismatch"
            bounds.append((previous_end, start, end))
            previous_end = end
        return ids, bounds, ()

    def _branched(self, turns: list[Turn]):
        """Each turn as its own single-turn conversation, all sharing one prefix (system prompt, `USER:`, image):
        ids = prefix + each conversation's text after the image, one after another -> (ids, per turn (its branch's
        start - 1, answer start, answer end), per turn its branch (start, end)). `batch_loss` gives every branch
        the positions and the view (prefix and itself) that it has alone, so each answer is learnt exactly as
        the single-turn question is asked, and the visual prefix is paid once for all of them."""
        alone = [self.tokenizer.encode_with_image(build_prompt([turn])) for turn in turns]
        at = alone[0].index(IMAGE_TOKEN_INDEX) + 1
        ids, bounds, branches = list(alone[0][:at]), [], []
        for turn, full in zip(turns, alone):
            assert full[:at] == ids[:at], "prefix mismatch"
            begin = len(ids)
            question = len(self.tokenizer.encode_with_image(build_prompt([Turn(turn.question)])))
            ids += full[at:]
            bounds.append((begin - 1, begin + question - at, len(ids)))
            branches.append((begin, len(ids)))
        return ids, bounds, tuple(branches)


BRANCH_QUOTA = {"color": 3, "shape": 3, "count": 1, "count_shape": 3, "exists": 4, "where": 3}


def branch_questions(scene, rng: random.Random, quota: dict[str, int]) -> list[tuple[str, str, str]]:
    """Up to quota[type] of the scene's answerable questions of each type, in random order ((type, question, answer));
    `exists` half yes, half no where the scene has both."""
    pools: dict[str, list] = {}
    for kind, question, answer, _ in questions(scene):
        pools.setdefault(kind, []).append((kind, question, answer))
    chosen = []
    for kind in QUESTION_TYPES:
        pool = pools.get(kind, [])
        rng.shuffle(pool)
        if kind == "exists":
            yes, no = [q for q in pool if q[2] == "yes"], [q for q in pool if q[2] == "no"]
            half = quota[kind] // 2
            take_yes = min(len(yes), max(half, quota[kind] - len(no)))
            pool = yes[:take_yes] + no[: quota[kind] - take_yes]
        chosen += pool[: quota[kind]]
    rng.shuffle(chosen)
    return chosen


def key_word(kind: str, question: str) -> str:
    """The question's word that names what to look for: 'triangle' in 'What color is the triangle?', 'red' in
    'What shape is the red object?', 'objects' in 'How many objects are there?'."""
    words = question.rstrip("?").split()
    if kind in ("count", "count_shape"):
        return words[2]
    if kind == "shape":
        return words[-2]
    return words[-1]


def token_masks(labels: torch.Tensor, views, point_grid: int) -> dict[str, np.ndarray]:
    """Point-token masks (V, G, G) from dense patch labels (V, 4, R, R): a token shows what any patch of its
    s x s region shows. 'color{c}' / 'shape{k}' (1-based indices), 'centre' and 'centre{k}' (the patch holding
    an object's centre, of shape k), and per view 'global' (the thumbnail, or the only view) / 'local' (the
    tiles, or the only view)."""
    scale = labels.shape[-1] // point_grid
    pooled = lambda m: m.reshape(len(views), point_grid, scale, point_grid, scale).any(axis=(2, 4))
    colors, shapes, centres = labels[:, 0].numpy(), labels[:, 1].numpy(), labels[:, 2].numpy()
    masks = {f"color{c}": pooled(colors == c) for c in range(1, len(COLORS) + 1)}
    masks |= {f"shape{k}": pooled(shapes == k) for k in range(1, len(SHAPES) + 1)}
    masks |= {f"centre{k}": pooled((centres == 1) & (shapes == k)) for k in range(1, len(SHAPES) + 1)}
    masks["centre"] = pooled(centres == 1)
    single = len(views) == 1
    masks["global"] = np.array([single or v.kind == "global" for v in views])
    masks["local"] = np.array([single or v.kind != "global" for v in views])
    return masks


def attention_target(kind: str, question: str, answer: str, masks: dict[str, np.ndarray], layout,
                     count_view: str = "tiles") -> np.ndarray:  # fmt: skip
    """Which of the layout's point tokens a question's key word should attend to (a bool per token): the
    object asked about in every view (colour, shape, exists-yes), in the global view only (where: position
    is read there), the centre tokens of the objects counted in the tiles (count; `count_view` "global": in
    the global view, where no tile border cuts an object in two), none (exists-no). A single view is both."""
    words = question.rstrip("?").split()
    color = lambda name: masks[f"color{1 + list(COLORS).index(name)}"]
    shape = lambda name: masks[f"shape{1 + SHAPES.index(name.removesuffix('s'))}"]
    if kind == "color":
        mask = shape(words[-1])
    elif kind == "shape":
        mask = color(words[-2])
    elif kind == "count":
        mask = masks["centre"] & masks["local" if count_view == "tiles" else "global"][:, None, None]
    elif kind == "count_shape":
        centres = masks[f"centre{1 + SHAPES.index(words[2].removesuffix('s'))}"]
        mask = centres & masks["local" if count_view == "tiles" else "global"][:, None, None]
    elif kind == "exists" and answer == "no":
        mask = np.zeros_like(masks["centre"])
    elif kind == "where":
        mask = color(words[-2]) & shape(words[-1]) & masks["global"][:, None, None]
    else:  # exists, yes: 'Is there a red circle'
        mask = color(words[-2]) & shape(words[-1])
    return mask[layout.view_index, layout.gy, layout.gx]


COUNT_MARKS = ("centre", "first", "solid", "region")
MARK_REGION = 2  # with count mark "region": the side, in patches, of the mark's block (the recipe's scale factor s)


def count_marks(scene, view, grid: int, mark: str = "centre", samples: int = 4, pixel_labels=None
                ) -> list[tuple[int, int, int]]:  # fmt: skip
    """(object index, row, column) of the patch in the view (R x R patches) holding each object's count mark, for
    the objects whose mark lies in the view. "centre": the patch under the object's centre. "first": the object's
    first patch in reading order (its top row of patches, then the leftmost) on the view's patch grid extended over
    the whole image, where a patch counts the object when one of its samples x samples points hits it (the object's
    centre patch when none does). "solid": the same with a patch counting the object when at least half of its
    points hit it (its most covered patch when no patch is half covered), so that a sliver of the object does not
    take the mark; the tower finds it worse than "first" (run BF, experiments/solid-mark). "region": the object's first
    MARK_REGION x MARK_REGION block of patches in reading order that one of its patches (as in "first") lies in; the
    patch returned is the block's top-left, and `patch_labels` marks the whole block, so that the mark is the same on
    the s x s patches a point token attends to; the point tokens carry it no better than "first" (run BH,
    experiments/token-marks). Any way an object has one mark in the thumbnail and one in all the tiles together
    (the tiles share one grid). The first patch is a local thing to find (nothing of the object above it or
    to its left), the centre of a large object is not (experiments/count-view, experiments/first-mark).
    `pixel_labels`: the scene's `render_labels()` as arrays, when the caller has them."""
    if mark not in COUNT_MARKS:
        raise ValueError(f"count mark must be one of {COUNT_MARKS}, not {mark!r}")
    step = view.size / grid
    offsets = (np.arange(samples) + 0.5) / samples
    colors, shapes = pixel_labels if pixel_labels is not None else (None, None)
    marks = []
    for index, obj in enumerate(scene.objects):
        u, v = view.from_image(obj.cx, obj.cy)
        row, column = math.floor(v / step), math.floor(u / step)  # the centre's patch
        if mark in ("first", "solid", "region"):
            if colors is None:
                colors, shapes = (np.asarray(m) for m in scene.render_labels())
            x0, y0, x1, y1 = obj.box
            (u0, v0), (u1, v1) = view.from_image(x0, y0), view.from_image(x1, y1)
            rows = np.arange(math.floor(v0 / step), math.floor(v1 / step) + 1)  # the box's patches, beyond the view too
            columns = np.arange(math.floor(u0 / step), math.floor(u1 / step) + 1)
            xs, _ = view.to_image((columns[:, None] + offsets[None, :]).reshape(-1) * step, 0.0)  # (C * samples,)
            _, ys = view.to_image(0.0, (rows[:, None] + offsets[None, :]).reshape(-1) * step)  # (R' * samples,)
            inside = (((ys >= max(0, y0)) & (ys < min(scene.height, y1)))[:, None]
                      & ((xs >= max(0, x0)) & (xs < min(scene.width, x1)))[None, :])  # fmt: skip
            yi = np.clip(np.floor(ys).astype(int), 0, scene.height - 1)
            xi = np.clip(np.floor(xs).astype(int), 0, scene.width - 1)
            hit = inside & (colors[yi][:, xi] == 1 + list(COLORS).index(obj.color)) & (shapes[yi][:, xi] == 1 + SHAPES.index(obj.shape))
            cover = hit.reshape(len(rows), samples, len(columns), samples).sum(axis=(1, 3))  # samples hit, per patch
            marked = 2 * cover >= samples * samples if mark == "solid" else cover > 0  # "solid": half covered or more
            if mark == "region" and marked.any():  # the first block in reading order holding one of the patches
                origin = np.array([rows[0], columns[0]])
                blocks = (np.argwhere(marked) + origin) // MARK_REGION  # (k, 2): each patch's block (row, column)
                first = blocks[np.lexsort((blocks[:, 1], blocks[:, 0]))[0]] * MARK_REGION - origin
            elif marked.any():
                first = np.argwhere(marked)[0]  # row-major: the top row, then its leftmost
            elif cover.any():  # "solid", an object no patch is half covered by: its most covered patch
                first = np.unravel_index(np.argmax(cover), cover.shape)
            if cover.any():
                row, column = int(rows[0] + first[0]), int(columns[0] + first[1])
        if mark == "region":
            row, column = row - row % MARK_REGION, column - column % MARK_REGION  # a block's top-left (a centre's too)
        if 0 <= row < grid and 0 <= column < grid:
            marks.append((index, row, column))
    return marks


def patch_labels(scene, views, grid: int, samples: int = 4, mark: str = "centre") -> torch.Tensor:
    """(V, 4, R, R) dense targets for each view's CLIP patches: colour and shape index of the object seen in
    the patch (0 = background; a patch counts an object when any of its samples x samples points hits it),
    1 where the patch holds an object's count mark (what counting needs: one mark per object; `count_marks`,
    its centre by default; with "region" all patches of its block), and the 3 x 3 cell of the image (0-8, row by
    row) under the patch's centre in the global view or the only view (what `where` needs; -1 in the tiles and on
    padding)."""
    colors, shapes = (np.asarray(m) for m in scene.render_labels())
    out = np.zeros((len(views), 4, grid, grid), dtype=np.int64)
    out[:, 3] = -1
    offsets = (np.arange(samples) + 0.5) / samples
    for view in views:
        step = view.size / grid
        u = (np.arange(grid)[:, None] + offsets[None, :]).reshape(-1) * step  # (R * samples,)
        xs, ys = view.to_image(u, u)
        xi = np.clip(np.floor(xs).astype(int), -1, scene.width)
        yi = np.clip(np.floor(ys).astype(int), -1, scene.height)
        inside_x, inside_y = (xi >= 0) & (xi < scene.width), (yi >= 0) & (yi < scene.height)
        for channel, source in enumerate((colors, shapes)):
            hits = np.zeros((grid * samples, grid * samples), dtype=np.int64)
            ok = inside_y[:, None] & inside_x[None, :]
            hits[ok] = source[np.clip(yi, 0, scene.height - 1)[:, None].repeat(len(xi), 1)[ok],
                              np.clip(xi, 0, scene.width - 1)[None, :].repeat(len(yi), 0)[ok]]  # fmt: skip
            cells = hits.reshape(grid, samples, grid, samples).transpose(0, 2, 1, 3).reshape(grid, grid, -1)
            out[view.index, channel] = cells.max(axis=-1)  # any object beats background (objects never overlap)
        side = MARK_REGION if mark == "region" else 1
        for _, row, column in count_marks(scene, view, grid, mark, samples, (colors, shapes)):
            out[view.index, 2, row : row + side, column : column + side] = 1
        if len(views) == 1 or view.kind == "global":
            xs, ys = view.to_image(*(((np.arange(grid) + 0.5) * step,) * 2))  # the patches' centres in the image
            column = np.where((xs >= 0) & (xs < scene.width), np.minimum(2, (3 * xs / scene.width).astype(int)), -1)
            row = np.where((ys >= 0) & (ys < scene.height), np.minimum(2, (3 * ys / scene.height).astype(int)), -1)
            placed = (row[:, None] >= 0) & (column[None, :] >= 0)
            out[view.index, 3] = np.where(placed, 3 * row[:, None] + column[None, :], -1)
    return torch.from_numpy(out)


def boundary(colors: torch.Tensor) -> torch.Tensor:
    """(V, R, R) bool: object patches with a differently labelled 8-neighbour (the edge of the view counts as
    the same), where an object's outline, and so its shape, is in view."""
    R = colors.shape[-1]
    padded = F.pad(colors[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    edge = torch.zeros_like(colors, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            edge |= padded[:, dy : dy + R, dx : dx + R] != colors
    return edge & (colors > 0)


def object_kinds(labels: torch.Tensor) -> torch.Tensor:
    """(V*R*R,) long: one id per (view, colour, shape) of each patch (labels: (V, 4, R, R)), its shape label the id
    modulo 1 + len(SHAPES). Two objects of one colour and shape in one view share theirs: the labels do not tell them
    apart."""
    V, _, R, _ = labels.shape
    view = torch.arange(V, device=labels.device).repeat_interleave(R * R)
    colors, shapes = labels[:, 0].reshape(-1), labels[:, 1].reshape(-1)
    return (view * (1 + len(COLORS)) + colors) * (1 + len(SHAPES)) + shapes


def object_weights(labels: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """(V*R*R,) float: 1 / the number of `chosen` patches (a (V*R*R,) bool) of the same object (`object_kinds`),
    0 where not chosen: each object's chosen patches sum to 1."""
    kind = object_kinds(labels)
    counts = torch.bincount(kind[chosen], minlength=labels.shape[0] * (1 + len(COLORS)) * (1 + len(SHAPES)))
    return torch.where(chosen, 1.0 / counts[kind].clamp(min=1).float(), 0.0)


def centre_loss(logits: torch.Tensor, centres: torch.Tensor, balanced: bool = False) -> torch.Tensor:
    """Cross-entropy of the "holds an object's centre" label, (N, 2) logits and (N,) 0/1 labels. `balanced`: the
    centres (one patch or token per object per view, rare) weigh as much in all as the rest; plain, a head meets
    most of the loss by calling nothing a centre. Either way no tower patch marks the centre of an object two or
    more point tokens across (experiments/count-view, experiments/balanced-centres)."""
    positives = int(centres.sum())
    if not balanced or positives in (0, len(centres)):
        return F.cross_entropy(logits.float(), centres)
    weight = torch.tensor([1.0, (len(centres) - positives) / positives], device=logits.device)
    return F.cross_entropy(logits.float(), centres, weight=weight)


class PatchHead(torch.nn.Module):
    """Training-only read-out of the tower's multi-level features per patch (stage 1): colour and object centre
    linearly, shape through a small MLP, and with `cells` the patch's 3 x 3 cell of the image linearly. With a
    linear shape read-out the tower never learns shape in the steps we can afford (outline accuracy stays at
    chance); through the MLP it does, and then a linear probe reads shape from its features too (what the
    projector and the LLM need). `balanced_shapes`: each object's outline patches in a view weigh as much together
    as another object's, instead of each patch as much as another (a 40% object has ~20x the outline patches of a
    2% one; experiments/error-anatomy). `object_shape_weight`: beside the per-patch shape term, that weight of a
    per-object one on its outline patches pooled (`object_shape_loss`; experiments/small-objects)."""

    def __init__(self, width: int, hidden: int = 256, cells: bool = False, balanced_centres: bool = False,
                 balanced_shapes: bool = False, object_shape_weight: float = 0.0):  # fmt: skip
        super().__init__()
        self.balanced_centres = balanced_centres  # see `centre_loss`
        self.balanced_shapes = balanced_shapes
        self.object_shape_weight = object_shape_weight
        self.colors = torch.nn.Linear(width, 1 + len(COLORS))
        self.centres = torch.nn.Linear(width, 2)
        self.shapes = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                                          torch.nn.GELU(), torch.nn.Linear(hidden, len(SHAPES)))  # fmt: skip
        self.cells = torch.nn.Linear(width, 9) if cells else None  # created last: without it, the same initialisation

    def loss(self, multi_level: torch.Tensor, labels: torch.Tensor, shape_only: bool = False,
             with_cells: bool = True) -> torch.Tensor:
        """multi_level: (V, R*R, L*C); labels: (V, 4, R, R). Shape on the objects' outline patches only (inside
        a big object a patch cannot see the outline: a target it cannot meet drowns the signal); colour over
        every patch, the background (most of a view) weighted 0.2; object centres; with `cells` (and `with_cells`), the
        cell of every global-view patch that has one (the tower's features hold no position until asked: a probe read it at
        chance, and TokenPacker's point tokens see only their own region, experiments/where-cell)."""
        x = multi_level.flatten(0, 1)
        colors, shapes, centres, cells = (column.reshape(-1) for column in labels.flatten(2).unbind(1))  # (V*R*R,) each
        edge = boundary(labels[:, 0]).reshape(-1)
        shape_loss = x.sum() * 0
        if edge.any() and self.balanced_shapes:
            weights = object_weights(labels, edge)[edge]
            per_patch = F.cross_entropy(self.shapes(x[edge]).float(), shapes[edge] - 1, reduction="none")
            shape_loss = (per_patch * weights).sum() / weights.sum()
        elif edge.any():
            shape_loss = F.cross_entropy(self.shapes(x[edge]).float(), shapes[edge] - 1)
        if self.object_shape_weight and edge.any():
            shape_loss = shape_loss + self.object_shape_weight * self.object_shape_loss(x, labels, edge)
        if shape_only:
            return shape_loss
        weight = torch.where(colors > 0, 1.0, 0.2)
        color_loss = (F.cross_entropy(self.colors(x).float(), colors, reduction="none") * weight).sum() / weight.sum()
        loss = shape_loss + color_loss + centre_loss(self.centres(x), centres, self.balanced_centres)
        placed = cells >= 0
        if self.cells is not None and with_cells and placed.any():
            loss = loss + F.cross_entropy(self.cells(x[placed]).float(), cells[placed])
        return loss

    def object_shape_loss(self, x: torch.Tensor, labels: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        """Shape read from each object's outline patches pooled (an inner patch cannot see the outline; a small
        object's patches are all outline), one cross-entropy term per object in a view (`object_kinds`): x
        (V*R*R, C), labels (V, 4, R, R), edge (V*R*R,) bool, the outline patches (`boundary`), at least one."""
        kinds, group = torch.unique(object_kinds(labels)[edge], return_inverse=True)  # (K,), (outline patches,)
        pooled = torch.zeros(len(kinds), x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, group, x[edge])
        pooled = pooled / torch.bincount(group, minlength=len(kinds)).unsqueeze(1).to(x.dtype)  # (K, C) mean features
        return F.cross_entropy(self.shapes(pooled).float(), kinds % (1 + len(SHAPES)) - 1)

    @torch.no_grad()
    def accuracy(self, multi_level: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
        """(colour accuracy on object patches, shape accuracy on outline patches, cell accuracy; nan without `cells`)."""
        x = multi_level.flatten(0, 1)
        colors, shapes, cells = labels[:, 0].reshape(-1), labels[:, 1].reshape(-1), labels[:, 3].reshape(-1)
        objects, edge, placed = colors > 0, boundary(labels[:, 0]).reshape(-1), cells >= 0
        color_right = (self.colors(x[objects]).argmax(-1) == colors[objects]).float().mean().item()
        shape_right = (self.shapes(x[edge]).argmax(-1) == shapes[edge] - 1).float().mean().item()
        cell_right = np.nan
        if self.cells is not None and placed.any():
            cell_right = (self.cells(x[placed]).argmax(-1) == cells[placed]).float().mean().item()
        return color_right, shape_right, cell_right


def token_labels(labels: torch.Tensor, scale: int) -> torch.Tensor:
    """(V, 4, R, R) patch labels -> (V, 4, G, G) point-token labels: colour, shape and centre by the region's
    maximum (any object beats background); the cell of the region's patch that holds an object's centre (so an
    object's centre token says the cell `where` asks for, even when its region straddles a cell border), else
    of the region's first patch."""
    V, _, R, _ = labels.shape
    G = R // scale
    pooled = F.max_pool2d(labels[:, :3].float(), scale).long()
    regions = lambda channel: labels[:, channel].reshape(V, G, scale, G, scale).permute(0, 1, 3, 2, 4).flatten(3)
    centre_patch = regions(2).argmax(-1, keepdim=True)  # (V, G, G, 1): the first patch when none is a centre
    cells = regions(3).gather(-1, centre_patch)[..., 0]
    return torch.cat([pooled, cells[:, None]], dim=1)


class TokenHead(torch.nn.Module):
    """Training-only linear probe on the projector's point tokens (stages 1b and 2): what lies in each token's
    s x s region (colour, shape, object centre; 0 = background) and, with `cells`, the object tokens' 3 x 3 cell
    of the image (see `token_labels`). Linear, so the LLM's attention can match on it. With `mark_values`, also a
    regression of each token's mark of each shape (1 on an object's count mark token, in its shape's column; 0
    elsewhere) from the token scaled to unit RMS, as the LLM's first RMSNorm sees it: a direction in which every
    mark reads the same, whatever its object's colour or size, so that a head keyed on it can share evenly."""

    def __init__(self, width: int, scale: int, cells: bool = False, balanced_centres: bool = False,
                 mark_values: bool = False, mark_weight: float = 1.0):  # fmt: skip
        super().__init__()
        self.scale = scale
        self.balanced_centres = balanced_centres  # see `centre_loss`
        self.mark_weight = mark_weight  # the object-centre (count mark) term's weight in `losses`
        self.colors = torch.nn.Linear(width, 1 + len(COLORS))
        self.shapes = torch.nn.Linear(width, 1 + len(SHAPES))
        self.centres = torch.nn.Linear(width, 2)
        self.cells = torch.nn.Linear(width, 9) if cells else None  # created last: without it, the same initialisation
        self.mark_values = None
        if mark_values:  # from 0 (the term starts at 1, each mark's own error, not at a random read-out's ~6, which
            with torch.random.fork_rng(devices=[]):  # would crowd the rest out), drawing no random numbers
                self.mark_values = torch.nn.Linear(width, len(SHAPES))
            torch.nn.init.zeros_(self.mark_values.weight)
            torch.nn.init.zeros_(self.mark_values.bias)

    def flat_labels(self, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(V, 4, R, R) patch labels -> the point tokens' colour, shape, centre and cell labels, each (V*G*G,), in
        the order of `tokens.flatten(0, 1)`."""
        return tuple(c.reshape(-1) for c in token_labels(labels, self.scale).flatten(2).unbind(1))

    def losses(self, tokens: torch.Tensor, labels: torch.Tensor, background: float = 0.2) -> dict[str, torch.Tensor]:
        """tokens: (V, G*G, H); labels: (V, 4, R, R), see `token_labels`. By name: colour over every token, the
        background weighted `background`; shape over the object tokens only (over all tokens the background class
        dominates and the loss is met without shape); object centres; with `cells`, the object tokens' cell."""
        x = tokens.flatten(0, 1)
        colors, shapes, centres, cells = self.flat_labels(labels)
        objects = colors > 0
        weight = torch.where(objects, 1.0, background)
        none = x.sum() * 0
        losses = {
            "colour": (F.cross_entropy(self.colors(x).float(), colors, reduction="none") * weight).sum() / weight.sum(),
            "shape": F.cross_entropy(self.shapes(x[objects]).float(), shapes[objects]) if objects.any() else none,
            "centre": centre_loss(self.centres(x), centres, self.balanced_centres) * self.mark_weight,
        }
        if self.cells is not None:
            placed = objects & (cells >= 0)
            losses["cell"] = F.cross_entropy(self.cells(x[placed]).float(), cells[placed]) if placed.any() else none
        if self.mark_values is not None:
            losses["mark value"] = self.mark_value_loss(x, shapes, centres)
        return losses

    def mark_value_loss(self, x: torch.Tensor, shapes: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Squared error of the mark regression on (N, H) tokens, the mean over the mark tokens plus the mean over
        the rest (marks are a few tokens in a hundred: unweighted, the error at them would barely count)."""
        x = x.float()
        unit = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)  # (N, H) at unit RMS
        marked = centres == 1
        target = F.one_hot(shapes, 1 + len(SHAPES))[:, 1:].float() * marked[:, None]  # (N, shapes)
        error = (self.mark_values(unit).float() - target).pow(2).sum(-1)  # (N,)
        none = error.sum() * 0
        return (error[marked].mean() if marked.any() else none) + (error[~marked].mean() if (~marked).any() else none)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, color_only: bool = False) -> torch.Tensor:
        """The sum of `losses`; `color_only`: the colour term alone (the recipe's stage 1b starts with it: learnt beside
        shape from the start, colour is crowded out)."""
        losses = self.losses(tokens, labels)
        return losses["colour"] if color_only else sum(losses.values())

    @torch.no_grad()
    def accuracy(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
        """(colour accuracy, shape accuracy) on the object tokens, cell accuracy on the objects' centre tokens
        (nan without `cells`)."""
        x = tokens.flatten(0, 1)
        colors, shapes, centres, cells = self.flat_labels(labels)
        objects, placed = colors > 0, (centres > 0) & (cells >= 0)
        color_right = (self.colors(x[objects]).argmax(-1) == colors[objects]).float().mean().item()
        shape_right = (self.shapes(x[objects]).argmax(-1) == shapes[objects]).float().mean().item()
        cell_right = np.nan
        if self.cells is not None and placed.any():
            cell_right = (self.cells(x[placed]).argmax(-1) == cells[placed]).float().mean().item()
        return color_right, shape_right, cell_right


class WhereHead(torch.nn.Module):
    """Training-only linear read-out of a `where` question's answer (the object's row and column of the 3 x 3
    cells) from its key word's hidden state after layer KEY_LAYER, where head 0 is taught to find the object
    (stage 2). It supervises the retrieval's output, not only where it looks: without it the key word knew its
    object's row at chance after that layer even when every point token carried its own position (0.27-0.34;
    with it 0.79, experiments/where-oracle). With `counts`, it also reads a counting question's answer (0 to
    MAX_COUNT) from its key word's state after the same layer (`count_loss`; experiments/count-readout). With `head`,
    it reads the `where` answer from that head's output at the key word instead (before o_proj: `width` is the head's
    size), and `batch_loss` teaches that head the `where` key word's attention target (experiments/where-head); with
    `head` and `counts`, the counting answer is read from the count head's output at its key word (layer
    `count_layer`'s head COUNT_HEAD, of the same size; experiments/count-head-readout)."""

    def __init__(self, width: int, counts: bool = False, head: int | None = None):
        super().__init__()
        self.head = head  # None: the key word's hidden state after layer KEY_LAYER
        self.rows = torch.nn.Linear(width, len(ROWS))
        self.columns = torch.nn.Linear(width, len(COLUMNS))
        self.counts = torch.nn.Linear(width, MAX_COUNT + 1) if counts else None  # made last: rows' and columns'
        #                                                       initial weights are those of a head without it

    def loss(self, hidden: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """hidden: (Q, H) the key words' states; rows, columns: (Q,) the answers' indices."""
        hidden = hidden.float()
        return F.cross_entropy(self.rows(hidden), rows) + F.cross_entropy(self.columns(hidden), columns)

    def count_loss(self, hidden: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """hidden: (Q, H) the counting key words' states; counts: (Q,) the answers n."""
        return F.cross_entropy(self.counts(hidden.float()), counts)


TRAINING_ATTENTION = "tokenpacker_training_sdpa"
KEY_LAYER, ANSWER_LAYER = 1, 2  # where head 0 is taught to find the key word's objects / the answer its key word
COLOUR_LINK_LAYER = 0  # with `colour_link`: where a head (0 unless told) is taught to bring a `where`/`exists` key
#                       word its colour word
MAX_COUNT = 5  # the largest answer to a counting question (1-5 objects in a scene)
COUNT_HEAD = 1  # with `count_head`: the head (of layer KEY_LAYER unless told) taught counting's even spread over <s>
#                and the marks
WHERE_HEAD = 2  # with `where_own_head`: the head of layer KEY_LAYER that the `where` read-out reads (not COUNT_HEAD)


class AttentionProbe:
    """Training-only: a head's log-attention at chosen (batch row, query position) pairs of chosen layers, kept
    differentiable so that it can be supervised (the retrieval is taught, not waited for). A query set is named by
    its layer (head 0) or by (layer, head). `outputs` asks for heads' outputs (before o_proj) at chosen positions."""

    def __init__(self, queries: dict[int | tuple[int, int], tuple[torch.Tensor, torch.Tensor]],
                 outputs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None):  # fmt: skip
        self.queries = queries  # layer or (layer, head) -> (batch rows (Q,), query positions (Q,))
        self.log_probs: dict[int | tuple[int, int], torch.Tensor] = {}  # the same names -> (Q, T)
        self.outputs = outputs or {}  # (layer, head) -> (batch rows (Q,), query positions (Q,))
        self.head_outputs: dict[tuple[int, int], torch.Tensor] = {}  # the same names -> (Q, head size)
        self.segments: list[tuple[int, int]] | None = None  # with `per_row`: each row's (prefix end, used length)


def per_row_attention(module, query, key, value, attention_mask, segments, **kwargs) -> torch.Tensor:
    """The branch mask's attention, row by row: the shared prefix [0, p) through SDPA's causal kernel (a prefix
    token sees the earlier prefix tokens only, so its mask row is the causal one), the branches [p, used) through
    the masked kernel on keys [0, used) only, and zeros at the padding (which no real token sees and which carries
    no label). The same output as one masked call over the padded batch, to rounding, without computing the
    masked-out upper triangle and the padding (experiments/row-attention). -> (B, T, heads, head size)"""
    rows = []
    for row, (prefix, used) in enumerate(segments):
        q, k, v = query[row : row + 1], key[row : row + 1], value[row : row + 1]
        parts = [sdpa_attention_forward(module, q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix], None, **kwargs)[0]]
        if used > prefix:
            mask = attention_mask[row : row + 1, :, prefix:used, :used]
            parts.append(sdpa_attention_forward(module, q[:, :, prefix:used], k[:, :, :used], v[:, :, :used], mask,
                                                **kwargs)[0])  # fmt: skip
        parts.append(query.new_zeros(1, query.shape[2] - used, query.shape[1], value.shape[-1]))
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)


def training_sdpa(module, query, key, value, attention_mask, attention_probe=None, **kwargs):
    if attention_mask is not None and attention_probe is not None and attention_probe.segments is not None:
        out = (per_row_attention(module, query, key, value, attention_mask, attention_probe.segments, **kwargs), None)
    else:
        out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    layer_idx = getattr(module, "layer_idx", None)
    for name, (rows, positions) in (attention_probe.queries.items() if attention_probe is not None else ()):
        layer, head = name if isinstance(name, tuple) else (name, 0)
        if layer != layer_idx:
            continue
        kv_head = head // (query.shape[1] // key.shape[1])  # grouped-query attention: the head's key/value head
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        logits = torch.einsum("qd,qtd->qt", query[rows, head, positions].float(), key[rows, kv_head].float()) * scaling
        if attention_mask is not None:  # branches: (B, 1, T, T) bool, True where a query may look
            hidden = ~attention_mask[rows, 0, positions, : key.shape[2]]
        else:
            hidden = torch.arange(key.shape[2], device=key.device)[None, :] > positions[:, None]
        attention_probe.log_probs[name] = logits.masked_fill(hidden, float("-inf")).log_softmax(-1)
    for (layer, head), (rows, positions) in (attention_probe.outputs.items() if attention_probe is not None else ()):
        if layer == layer_idx:
            attention_probe.head_outputs[(layer, head)] = out[0][rows, positions, head]  # out[0]: (B, T, heads, size)
    return out


def cpu_does_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX, by oneDNN's own check). Without it (AVX2
    only, e.g. AMD Zen 3) bfloat16 matrix products take a slow path: a stage-2 step under bfloat16 autocast ran
    15-18 s there instead of about 1 s (experiments/speed/README.md)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_mllm_dtype(name: str) -> str:
    """'bfloat16' or 'float32' for stages 2-3; 'auto': float32 where the CPU has no native bfloat16."""
    if name == "auto":
        return "bfloat16" if cpu_does_bfloat16() else "float32"
    if name not in ("bfloat16", "float32"):
        raise ValueError(f"mllm_dtype must be 'auto', 'bfloat16' or 'float32', not {name!r}")
    return name


AttentionInterface.register(TRAINING_ATTENTION, training_sdpa)
AttentionMaskInterface.register(TRAINING_ATTENTION, sdpa_mask)


def attention_mass_loss(log_probs: torch.Tensor, targets: list[np.ndarray], weights: torch.Tensor | None = None,
                        spread: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:  # fmt: skip
    """-log of the attention mass that each row of (Q, T) log-attention puts on its target positions (the
    mass, not a uniform spread: one of a big object's tokens is as good as all of them), and the mean mass.
    `spread` (Q,) bool: those rows are taught an even spread over their targets instead, the cross-entropy
    -mean(log attention) over the targets (least when each target gets 1/len of the mass and nothing else any).
    `weights` (Q,): each row's loss times its weight, summed over Q rows and divided by Q (weights of 1: the mean)."""
    on_target = torch.zeros_like(log_probs, dtype=torch.bool)
    for i, positions in enumerate(targets):
        on_target[i, torch.as_tensor(positions)] = True
    log_mass = log_probs.masked_fill(~on_target, float("-inf")).logsumexp(-1)  # (Q,)
    row_loss = -log_mass
    if spread is not None:
        even = -log_probs.masked_fill(~on_target, 0.0).sum(-1) / on_target.sum(-1)  # (Q,) cross-entropy to 1/len each
        row_loss = torch.where(spread, even, row_loss)
    loss = row_loss.mean() if weights is None else (row_loss * weights).sum() / len(row_loss)
    return loss, log_mass.detach().exp().mean().item()


def branch_attention(rows: list[tuple[int, list[tuple[int, int]]]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mask (B, 1, T, T) bool and position ids (B, T) for a batch of sequences made of a shared prefix and
    branches: per row its length and its branches' [start, end) sequence positions (none: one causal sequence). A
    branch token sees the prefix and its own branch's earlier tokens, at positions that continue the prefix's, as
    if it were alone after it; padding sees only itself (no row without a key: SDPA would give nan)."""
    allowed = torch.zeros(len(rows), length, length, dtype=torch.bool)
    positions = torch.arange(length).repeat(len(rows), 1)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for i, (used, branches) in enumerate(rows):
        prefix = branches[0][0] if branches else used  # without branches the whole sequence is one causal prefix
        allowed[i, :prefix, :prefix] = causal[:prefix, :prefix]
        for start, end in branches:
            allowed[i, start:end, :prefix] = True
            allowed[i, start:end, start:end] = causal[: end - start, : end - start]
            positions[i, start:end] = torch.arange(prefix, prefix + end - start)
        allowed[i, used:, used:] = torch.eye(length - used, dtype=torch.bool)
    return allowed[:, None], positions


def batch_loss(model: TokenPackerForCausalLM, token_head: TokenHead | None, examples, where_head: WhereHead | None = None,
               where_attention: float = 1.0, count_layer: int = KEY_LAYER, link_head: int = 0,
               per_row: bool = False, where_answer: float = 1.0):  # fmt: skip
    """Cross-entropy on the answer tokens (and their </s>) of a batch of conversations with different view
    counts (examples with `branches` get the attention mask and positions of `branch_attention`); the same at each question's key word for the answer's first token; the dense probes' losses on
    the same views' point tokens; the attention supervision (key word -> its objects' point tokens in
    layer KEY_LAYER, the `where` key words' rows weighted `where_attention`; answer -> key word in ANSWER_LAYER;
    key word -> colour word in COLOUR_LINK_LAYER for the examples' links, in head `link_head` (its mean mass under
    "link"); head 0 for the rest; and, for the examples' `counts`,
    counting's key word -> an even spread over <s> and its marks in layer `count_layer`'s head COUNT_HEAD) with the
    mean mass on target per layer (the count head's under (count_layer, COUNT_HEAD)) and, under "where", the
    `where` key words' mean mass in KEY_LAYER (nan without `where` questions);
    the read-out of the key words' states after KEY_LAYER (`where_head`: the `where` answers', and with its
    `counts` the counting answers' too; 0 without one or without such questions; with its `head`, the `where`
    answers from that head's output at the key word, the head taught the `where` key words' targets too, its mean
    mass under (KEY_LAYER, head), and the counting answers from the count head's output at theirs); and, per
    answer, (question type, whether every answer token was the argmax).
    `per_row`: a branched batch's attention is computed row by row (`per_row_attention`), not in one masked call.
    `where_answer`: the `where` answers' tokens (and their </s>) weigh this much in the answer loss, the others 1 (its
    mean stays over all answer tokens, so the other answers' gradients are unchanged; the answer loss returned, and
    so the one training logs, is the weighted one)."""
    views = torch.cat([prepared.pixel_values for prepared, *_ in examples])
    tower = model.model.vision_tower
    with torch.set_grad_enabled(any(p.requires_grad for p in tower.parameters())):
        features, multi_level = tower(views)
    tokens = model.model.mm_projector(features, multi_level).tokens  # (all views, G*G, H)
    dense = torch.cat([labels for *_, labels in examples])
    patch_loss = token_head.loss(tokens, dense) if token_head is not None else tokens.sum() * 0
    sequences, targets, answers, keys, places, tallies, where_rows, spread_rows, offset = [], [], [], [], [], [], [], [], 0
    where_spans = []  # per `where` answer: (row, first sequence position, end), its words and </s>
    branched = []  # per row its length and its branches' sequence positions (`branch_attention`)
    count_name = (count_layer, COUNT_HEAD)  # with `count_head` examples: counting's own head, taught an even spread
    where_name = (KEY_LAYER, where_head.head) if where_head is not None and where_head.head is not None else None
    link_name = COLOUR_LINK_LAYER if link_head == 0 else (COLOUR_LINK_LAYER, link_head)  # the colour link's head
    supervised = {link_name: [], KEY_LAYER: [], ANSWER_LAYER: [], count_name: []}  # layer (head 0) or
    #                                           (layer, head) -> [(row, query position, target positions)]
    if where_name is not None:  # the `where` key words' own head, taught their objects as head 0 is
        supervised[where_name] = []
    for prepared, ids, taught, _ in examples:
        count = prepared.pixel_values.shape[0]
        visual = model.embed_visual_sequence(tokens[offset : offset + count], prepared.grid)
        offset += count
        embeds = model.build_inputs_embeds(torch.tensor(ids), visual)[0]
        shift = visual.shape[0] - 1  # the placeholder became len(visual) embeddings
        branched.append((embeds.shape[0], [(start + shift, end + shift) for start, end in taught.branches]))
        labels = torch.full((embeds.shape[0],), -100)
        for start, end, kind in taught.spans:
            labels[start + shift : end + shift] = torch.tensor(ids[start:end])
            answers.append((len(sequences), start + shift, end - 1 + shift, kind))  # the answer's words, not </s>
            if kind == "where":
                where_spans.append((len(sequences), start + shift, end + shift))
        keys += [(len(sequences), position + shift, target) for position, target, _ in taught.keys]
        supervised[KEY_LAYER] += [(len(sequences), position + shift, objects) for position, _, objects in taught.keys]
        where_keys = {key for key, _, _ in taught.places}
        spread_rows += [position in taught.spread for position, _, _ in taught.keys]  # per KEY_LAYER row: taught a spread
        where_rows += [position in where_keys for position, _, _ in taught.keys]  # per KEY_LAYER row: a `where` key word
        if where_name is not None:
            supervised[where_name] += [(len(sequences), position + shift, objects)
                                       for position, _, objects in taught.keys if position in where_keys]  # fmt: skip
        supervised[ANSWER_LAYER] += [(len(sequences), query + shift, np.array([key + shift])) for query, key in taught.rows]
        places += [(len(sequences), key + shift, row, column) for key, row, column in taught.places]
        tallies += [(len(sequences), key + shift, n) for key, n in taught.tallies]
        supervised[link_name] += [(len(sequences), key + shift, np.array([colour + shift])) for key, colour in taught.links]
        supervised[count_name] += [(len(sequences), key + shift, spread_over) for key, spread_over in taught.counts]
        sequences.append(embeds)
        targets.append(labels)
    length = max(s.shape[0] for s in sequences)
    padded = torch.zeros(len(sequences), length, sequences[0].shape[-1], dtype=sequences[0].dtype)
    labels = torch.full((len(sequences), length), -100)
    for i, (s, t) in enumerate(zip(sequences, targets)):
        padded[i, : len(s)], labels[i, : len(t)] = s, t
    attention_mask, position_ids = branch_attention(branched, length) if any(b for _, b in branched) else (None, None)
    read_counts = where_head is not None and where_head.counts is not None and bool(tallies)
    read_where, after_key_layer = where_head is not None and bool(places), {}
    outputs = {where_name: (torch.tensor([r for r, _, _, _ in places]), torch.tensor([k for _, k, _, _ in places]))
               } if read_where and where_name is not None else {}  # fmt: skip
    if read_counts and where_name is not None:  # a read-out of heads: n from the count head's output at its key word
        outputs[count_name] = (torch.tensor([r for r, _, _ in tallies]), torch.tensor([k for _, k, _ in tallies]))
    probe = AttentionProbe({layer: (torch.tensor([r for r, _, _ in rows]), torch.tensor([q for _, q, _ in rows]))
                            for layer, rows in supervised.items() if rows}, outputs)  # fmt: skip
    if per_row and attention_mask is not None:  # the branch mask, computed row by row (`per_row_attention`)
        probe.segments = [(branches[0][0] if branches else used, used) for used, branches in branched]
    # Without branches no attention mask: the padding is on the right, so under causal attention no real token sees
    # it (the padded positions carry no label), and without a mask SDPA takes its causal kernel: the same gradients
    # bit for bit, a full-range batch's loss and backward in 1.8 s instead of 2.4 here (experiments/speed).
    # The `where` read-out takes the key words' states after layer KEY_LAYER from a hook held for this forward
    # only: `output_hidden_states` leaves transformers' output recorders hooked on the layers, and a stage 3
    # resumed from a checkpoint then no longer matched the full run's (its losses differed in the 4th digit)
    record = lambda module, inputs, output: after_key_layer.update(hidden=output[0] if isinstance(output, tuple) else output)
    hooked = (read_where or read_counts) and where_name is None
    hook = model.model.layers[KEY_LAYER].register_forward_hook(record) if hooked else None
    try:
        logits = model(inputs_embeds=padded, attention_mask=attention_mask, position_ids=position_ids,
                       attention_probe=probe).logits.float()  # fmt: skip
    finally:
        if hook is not None:
            hook.remove()
    row_weights = {KEY_LAYER: torch.where(torch.tensor(where_rows, dtype=torch.bool), where_attention, 1.0)
                   if where_attention != 1.0 and any(where_rows) else None}  # fmt: skip
    spread = {KEY_LAYER: torch.tensor(spread_rows, dtype=torch.bool) if any(spread_rows) else None,
              count_name: torch.ones(len(supervised[count_name]), dtype=torch.bool)}
    attention = {layer: attention_mass_loss(probe.log_probs[layer], [t for *_, t in rows], row_weights.get(layer),
                                            spread.get(layer))
                 for layer, rows in supervised.items() if rows}  # fmt: skip
    attention_loss = sum((loss for loss, _ in attention.values()), logits.sum() * 0)
    masses = {layer: mass for layer, (_, mass) in attention.items()}
    masses["link"] = masses.get(link_name, np.nan)  # the colour link's mean mass, whichever head it is taught to
    masses["where"] = np.nan  # the `where` key words' own mean mass in KEY_LAYER, for the log
    if any(where_rows):
        chosen = torch.tensor(where_rows, dtype=torch.bool)
        with torch.no_grad():
            masses["where"] = attention_mass_loss(probe.log_probs[KEY_LAYER][chosen],
                                                  [t for (*_, t), w in zip(supervised[KEY_LAYER], where_rows) if w])[1]
    predicted, wanted = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)  # next-token pairs
    if where_answer == 1.0 or not where_spans:
        answer_loss = F.cross_entropy(predicted, wanted, ignore_index=-100)
    else:
        token_weights = torch.ones(labels.shape)  # (B, T): the weight of the label at each position
        for row, start, end in where_spans:
            token_weights[row, start:end] = where_answer
        per_token = F.cross_entropy(predicted, wanted, ignore_index=-100, reduction="none")
        answer_loss = (per_token * token_weights[:, 1:].reshape(-1)).sum() / (wanted != -100).sum()
    right = logits.argmax(-1)[:, :-1] == labels[:, 1:]  # (B, T-1): the token after each position
    scores = [(kind, bool(right[i, start - 1 : end - 1].all())) for i, start, end, kind in answers]
    # Intermediate supervision: at the question's key word ('triangle' in 'What color is the triangle?') the
    # model already predicts the answer's first token. The word itself can query the visual tokens (one hop),
    # so the retrieval is learned without waiting for the answer position to first learn to find the word.
    rows, positions, key_targets = (torch.tensor(column) for column in zip(*keys)) if keys else (None, None, None)
    key_loss = F.cross_entropy(logits[rows, positions], key_targets) if keys else logits.sum() * 0
    where_loss = logits.sum() * 0
    if read_where:
        rows, positions, where_rows, where_columns = (torch.tensor(column) for column in zip(*places))
        read = probe.head_outputs[where_name] if where_name is not None else after_key_layer["hidden"][rows, positions]
        where_loss = where_loss + where_head.loss(read, where_rows, where_columns)
    if read_counts:  # the count read-out shares the `where` read-out's term (and so its weight and start)
        rows, positions, answers_n = (torch.tensor(column) for column in zip(*tallies))
        read = probe.head_outputs[count_name] if where_name is not None else after_key_layer["hidden"][rows, positions]
        where_loss = where_loss + where_head.count_loss(read, answers_n)
    return answer_loss, key_loss, patch_loss, attention_loss, where_loss, masses, scores


def _update(optimizer: torch.optim.Optimizer, params: list, loss: torch.Tensor, lr: float) -> None:
    """One step of stages 1 and 1b: gradients clipped to norm 1, the learning rate given (their linear warm-up)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    _step_at(optimizer, lr)


def _step_at(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The optimizer's step at learning rate `lr` (stages 1 and 1b set it themselves: no scheduler)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()


def pretrain_vision(model: TokenPackerForCausalLM, head: PatchHead, make: "ExampleMaker", rng: random.Random,
                    steps: int, shape_steps: int, batch_size: int, lr: float, log_every: int,
                    cell_start: int | None = None, split: dict | None = None, head_steps: int = 0,
                    name: str = "vision") -> None:  # fmt: skip
    """Stage 1: the vision tower learns dense patch features on single scenes, in fp32. The first `shape_steps`
    learn shape alone on small canvases with big objects (outlines spanning several patches): colour is so
    much easier that, trained together from the start, it crowds shape out. Then colour and object centres
    join, on small canvases and the task's full range half and half. A head with `cells` adds the 3 x 3 cell
    from step `cell_start` on (None: with colour). With `split`, every scene is drawn from it instead (stage 1c);
    the first `head_steps` train the head alone, the tower frozen (a fresh head's first gradients are noise)."""
    tower = list(model.model.vision_tower.parameters())
    params = tower + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    with_cells = head.cells is not None
    start, history = time.time(), []
    for step in range(steps):
        shape_only = step < shape_steps
        if split is not None:
            splits = [split] * batch_size
        else:
            splits = [WARMUP_SPLIT if shape_only or rng.random() < 0.5 else SPLITS["standard"] for _ in range(batch_size)]
        batch = [make.views_and_labels(rng, each) for each in splits]
        views = torch.cat([v for v, _ in batch])
        labels = torch.cat([lab for _, lab in batch])
        head_only = step < head_steps
        with torch.set_grad_enabled(not head_only):
            _, multi_level = model.model.vision_tower(views)
        loss = head.loss(multi_level, labels, shape_only, with_cells=cell_start is None or step >= cell_start)
        _update(optimizer, params, loss, lr * min(1.0, (step + 1) / 50))
        history.append((loss.item(), *head.accuracy(multi_level.detach(), labels)))  # on data not yet trained on
        if (step + 1) % log_every == 0:
            loss_, color, shape, cell = (np.nanmean if with_cells else np.mean)(history[-log_every:], axis=0)
            print(f"{name} step {step + 1}/{steps}{' (head only)' if head_only else ''}  patch loss {loss_:.4f}  object colour acc {color:.3f}  "
                  f"outline shape acc {shape:.3f}  " + (f"cell acc {cell:.3f}  " if with_cells else "") +
                  f"{time.time() - start:.0f}s", flush=True)  # fmt: skip


def balanced_step(optimizer: torch.optim.Optimizer, params: list, losses: list[torch.Tensor], lr: float) -> None:
    """One step on the sum of the losses' gradients, each scaled to norm 1 (stage 1b with the cell): on the plain
    sum the term learnt first crowds out the others (colour first: the cell never joined, 0.16-0.21 after 800
    steps; cell first: colour stayed at chance; experiments/where-cell)."""
    total = [torch.zeros_like(p) for p in params]
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)) + 1e-12
        total = [t + g / norm for t, g in zip(total, grads)]
    for p, g in zip(params, total):
        p.grad = g
    _step_at(optimizer, lr)


def pretrain_projector(model: TokenPackerForCausalLM, token_head: TokenHead, make: "ExampleMaker", rng: random.Random,
                       steps: int, color_steps: int, batch_size: int, lr: float, log_every: int, gate: float = 0.9,
                       cell_start: int | None = None, mark_steps: int = 0) -> None:  # fmt: skip
    """Stage 1b: the projector learns to carry what the frozen tower sees (colour, shape, centres) into its point
    tokens, through the linear TokenHead: colour alone for `color_steps`, then all three until the object
    tokens' colour and shape accuracy (mean over the last `log_every` steps) both pass `gate`, at most `steps`
    in all. Without this stage the tower's shape (linear probe 0.82) reached the point tokens at 0.36 after
    all of stage 2; with colour and shape learnt together from the start, shape crowded colour out (0.27).
    With the TokenHead's cell (run H's stage 1b, experiments/where-cell), each term's gradient at the same norm
    (`balanced_step`), colour without its background class (else it sits on a 'background everywhere' plateau
    while the other terms take over), and the gate needs the centre tokens' cell too; with `cell_start`, instead,
    the plain sum, the cell's term joining at step `cell_start` (when colour and most of shape are learnt).
    `mark_steps`: before all this, that many steps of the mark (object-centre) term alone, which then stays beside
    colour in its steps alone; the schedule above counts its steps from their end (experiments/mark-weight)."""
    if mark_steps and token_head.cells is not None and cell_start is None:
        raise ValueError("mark_steps: stage 1b's plain sum only (cell_start, or no cell)")
    params = list(model.model.mm_projector.parameters()) + list(token_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    with_cells = token_head.cells is not None
    start, history = time.time(), []
    for step in range(mark_steps + steps):
        mark_only, color_only = step < mark_steps, step < mark_steps + color_steps
        batch = [make.views_and_labels(rng, WARMUP_SPLIT if rng.random() < 0.5 else None) for _ in range(batch_size)]
        views = torch.cat([v for v, _ in batch])
        labels = torch.cat([lab for _, lab in batch])
        with torch.no_grad():
            features, multi_level = model.model.vision_tower(views)
        tokens = model.model.mm_projector(features, multi_level).tokens  # (V, G*G, H)
        step_lr = lr * min(1.0, (step + 1) / 50)
        if mark_steps or (with_cells and cell_start is not None):
            losses = token_head.losses(tokens, labels)
            if mark_only:
                terms = [losses["centre"]]
            elif color_only:
                terms = [losses["colour"]] + ([losses["centre"]] if mark_steps else [])
            else:
                terms = [v for k, v in losses.items() if k != "cell" or step - mark_steps >= cell_start]
            loss = sum(terms)
            _update(optimizer, params, loss, step_lr)
        elif with_cells:
            losses = token_head.losses(tokens, labels, background=0.0)
            terms = [losses["colour"]] if color_only else list(losses.values())
            balanced_step(optimizer, params, terms, step_lr)
            loss = sum(terms)
        else:
            loss = token_head.loss(tokens, labels, color_only)
            _update(optimizer, params, loss, step_lr)
        history.append((loss.item(), *token_head.accuracy(tokens.detach(), labels)))
        if (step + 1) % log_every == 0:
            loss_, color, shape, cell = (np.nanmean if with_cells else np.mean)(history[-log_every:], axis=0)
            alone = " (mark only)" if mark_only else (" (colour and mark)" if mark_steps else " (colour only)") if color_only else ""
            print(f"projector step {step + 1}/{mark_steps + steps}{alone}  token loss {loss_:.4f}  "
                  f"object colour acc {color:.3f}  object shape acc {shape:.3f}  "
                  + (f"centre-token cell acc {cell:.3f}  " if with_cells else "") +
                  f"{time.time() - start:.0f}s", flush=True)  # fmt: skip
            if not color_only and color > gate and shape > gate and (not with_cells or cell > gate):
                print(f"projector: colour{', shape and cell' if with_cells else ' and shape'} past {gate} after {step + 1} steps", flush=True)
                return
    print(f"projector: gate {gate} not reached in {mark_steps + steps} steps", flush=True)


def sincos_position_embedding(grid: int, width: int) -> torch.Tensor:
    """(1 + grid * grid, width): a 2-D sine-cosine table (MAE's) to start the tower's learned position embedding
    from, in place of CLIP's random one: the row in the first half of the channels, the column in the second,
    frequencies 1 / 10000^(i / (width / 4)), zeros for the class token. Each row has norm sqrt(width / 2), about a
    patch embedding's, where CLIP's initialisation (std 0.02) leaves position ~35x weaker than content and the
    content-only losses of stage 1 never ask for it (experiments/where-cell)."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (width / 4,)
    index = torch.arange(grid, dtype=torch.float64)
    rows, columns = torch.meshgrid(index, index, indexing="ij")  # (grid, grid) each
    angles = lambda axis: axis.reshape(-1, 1) * omega  # (grid * grid, width / 4)
    table = torch.cat([angles(rows).sin(), angles(rows).cos(), angles(columns).sin(), angles(columns).cos()], dim=1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), table]).float()


WARMUP_SPLIT = dict(min_side=224, max_side=336, min_size=0.1, max_size=0.4)  # few views, big objects
SMALL_OBJECTS_SPLIT = dict(min_side=224, max_side=1344, min_size=0.02, max_size=0.10)  # stage 1c: 5-45 px in a view


def train(out: Path, steps: int = 1250, vision_steps: int = 1600, shape_steps: int = 800, projector_steps: int = 1400, projector_color_steps: int = 200,
          warmup_steps: int = 600, seed: int = TRAIN_SEED, batch_size: int = 8, lr: float = 8e-4, vision_lr: float = 1e-3, small_share: float = 0.25,
          patch_weight: float = 0.3, key_weight: float = 1.0, attention_weight: float = 0.5, max_turns: int = 8, log_every: int = 25,
          save_every: int = 250, tower_from: Path | None = None, polish_steps: int = 150, polish_lr: float = 2.5e-4,
          polish_min_turns: int = 4, polish_max_turns: int = 12, resume_from: Path | None = None, where_weight: float = 1.0,
          where_start: int = 0, sincos_position: bool = True, cell_target: bool = False,
          colour_link: bool = True, link_head: int | None = None, mllm_dtype: str = "bfloat16", where_attention: float = 1.0,
          count_view: str = "tiles", balanced_centres: bool = False, count_mark: str = "first",
          count_spread: bool = False, count_head: bool = False, count_layer: int = KEY_LAYER,
          mark_values: bool = False, count_readout: bool = False,
          tower_cell_start: int | None = 1000, where_own_head: bool = True,
          token_cell_start: int | None = 400, token_cell_stage2: bool = False,
          branches: bool = True, mark_weight: float = 1.0, projector_mark_steps: int = 0,
          per_row_attention: bool = False, where_answer_weight: float = 1.0,
          where_answer_steps: int = 600, balanced_shapes: bool = False,
          small_object_steps: int = 0, small_object_head_steps: int = 100,
          small_object_shape_steps: int = 0, vision_width: int = 64,
          object_shape_weight: float = 0.0) -> TokenPackerPipeline:  # fmt: skip
    """Stage 1: `vision_steps` of dense patch pretraining of the tower, the first `shape_steps` on shape alone
    (see `pretrain_vision`). Stage 1b: at most `projector_steps` of the projector alone on the point-token probe,
    the first `projector_color_steps` on colour alone (see `pretrain_projector`). Stage 2: `steps` of MLLM
    training of the projector and the LLM on questions about scenes, the tower frozen: the
    answers' loss, the same at each question's key word, the dense probe on the point tokens (`patch_weight`)
    and the attention supervision (`attention_weight`; see `batch_loss`). The first `warmup_steps` use small
    canvases (`WARMUP_SPLIT`; of 2000 sampled, 83% are one view of 145 visual tokens and the rest 2 x 3 or 3 x 2
    tiles and a thumbnail, 1015 tokens: the LLM learns to find objects in short prefixes before it meets the full range).
    Stage 3: `polish_steps` more on the full range only, at `polish_lr`, without the dense probe; without
    `branches` each scene is asked `polish_min_turns` to `polish_max_turns` questions (duplicates dropped) in one
    conversation (with `branches`, stage 2's quota; the turn counts are then unused, though training.json lists them). `where_weight`: stage 2's weight of
    the `where` read-out at the key word (`WhereHead`; 0: none), from stage 2's step `where_start` on (before it
    the read-out is neither trained nor trains the LLM). `sincos_position`: the tower's position embedding
    starts as a 2-D sine-cosine table (`sincos_position_embedding`), not CLIP's random one. `cell_target`: the 3 x 3
    cell of the image is a target of the tower's patches (stage 1, with colour) and of the object point tokens
    (stages 1b and 2, `TokenHead`), and stage 1b balances its terms (see `pretrain_projector`). `tower_cell_start`:
    the cell is a target of the tower's patches alone, from stage 1's step `tower_cell_start` on (stages 1b-3 as
    without it; not with `cell_target`). `token_cell_start`: the object point tokens' cell is a target of stage
    1b's plain sum from its step `token_cell_start` on, and with `token_cell_stage2` of stage 2's dense probe too (not
    with `cell_target`; without `token_cell_stage2` the cell in the tokens is what stage 1b made it, and what the
    `where` read-out's gradient adds: in run AG, where stage 2's probe had it, it took colour's place).
    `where_own_head`: stage 2's `where` read-out reads layer KEY_LAYER's head WHERE_HEAD at the key word, and that
    head is taught the `where` key word's attention target (`WhereHead(head=)`). `colour_link`: stages 2 and 3 also teach head
    `link_head` of layer `COLOUR_LINK_LAYER` (None: head 1, run BD's; 0 without the link) to bring each `where` /
    `exists` key word its colour word (`ExampleMaker(colour_link=True)`, `batch_loss`); it adds links only, so the
    examples are the same.
    `where_attention`: in stages 2 and 3 the `where` key words' attention loss weighs this much (the others' 1).
    `count_view`: where stages 2 and 3 teach counting's key word to find the centre tokens ("tiles" or "global";
    `attention_target`). `balanced_centres`: the tower's (stage 1) and the point tokens' (stages 1b and 2) object-centre
    term weighs its rare centres as much as the rest (`centre_loss`). `count_mark`: which patch of an object is the
    one mark that the tower, the point tokens and counting's key word are taught ("centre", "first", "solid" or
    "region"; `count_marks`).
    `count_spread`: stages 2 and 3 teach counting's key word an even spread over <s> and its n marks' tokens, 1/(n+1)
    each, instead of its mass on the marks (`ExampleMaker`, `attention_mass_loss`). `count_head`: the same even spread
    taught to a head of its own, layer `count_layer`'s head COUNT_HEAD, while head 0 keeps its mass on the marks.
    `mark_values`: stages 1b and 2's dense probe also regresses each point token's per-shape mark (`TokenHead`).
    `mark_weight`: stages 1b and 2's dense probe weighs its object-centre (count mark) term this much (`TokenHead`;
    1: the recipe; experiments/mark-weight). `projector_mark_steps`: stage 1b starts with that many steps of the tokens'
    mark alone (`pretrain_projector`'s `mark_steps`; 0: the recipe). `per_row_attention`: stages 2 and 3 compute
    the branches' attention row by row (`per_row_attention`): the same function as one masked call, to rounding, and
    faster, but bfloat16 rounds differently, so not the same bytes as run BD's recipe (experiments/row-attention).
    `where_answer_weight`: in stage 2's first `where_answer_steps` steps the `where` answers' tokens weigh this much in
    the answer loss (`batch_loss`'s `where_answer`; 1: the recipe; experiments/where-answer-weight).
    `balanced_shapes`: stage 1's shape term weighs each object's outline patches in a view as much as another
    object's (`PatchHead`, `object_weights`; experiments/error-anatomy).
    `small_object_steps`: stage 1c, after stage 1 (or the tower of `tower_from`), that many more steps of the tower
    on scenes of small objects only (`SMALL_OBJECTS_SPLIT`), all terms, with a fresh `PatchHead` whose first
    `small_object_head_steps` train it alone (`pretrain_vision`'s `split`; 0: the recipe; experiments/small-objects);
    its first `small_object_shape_steps` learn shape alone (as stage 1's first steps do).
    `vision_width`: the tower's width (`default_config`; 64: the recipe; experiments/small-objects).
    `object_shape_weight`: stages 1 and 1c add that weight of a per-object shape term (`PatchHead.object_shape_loss`;
    0: the recipe; experiments/small-objects).
    `count_readout`: stage 2's read-out (`WhereHead(counts=True)`) also reads each counting answer n from its key
    word's state after KEY_LAYER, in the same term as the `where` read-out (`where_weight`, `where_start`); with
    `where_own_head` it reads n from the count head's output at the key word instead (needs `count_head`).
    `branches`: stages 2 and 3 ask each scene up to BRANCH_QUOTA questions of each type, each as its own single-turn
    conversation after one shared prefix (`ExampleMaker(branches=)`, `branch_attention`): about 13 answers a scene
    instead of 1-8 (stage 3: 4-12) turns of one conversation, for ~1.6x the time of a step (experiments/branches).
    `mllm_dtype`: stages 2 and 3 compute under bfloat16 autocast (the recipe, bit-reproducible) or in float32, 8x
    faster on a CPU without native bfloat16 but not bit-reproducible (two runs differ by ~1e-9 after a few steps);
    "auto" takes float32 where `cpu_does_bfloat16()` is False.

    Each stage starts from its own seeds (seed, seed + 1, seed + 2, seed + 3), so `tower_from` (a checkpoint of
    this recipe, whose tower stage 2 leaves as stage 1 made it) can stand in for stage 1, and `resume_from` (a
    checkpoint of stages 1-2, i.e. with `polish_steps=0`) for stages 1-2, and the rest of the run is the same as
    in a full one."""
    if count_readout and not where_weight:
        raise ValueError("count_readout needs where_weight > 0: the count read-out shares the `where` read-out's term")
    if where_own_head and not where_weight:
        raise ValueError("where_own_head is where the `where` read-out reads: it needs where_weight > 0")
    if where_own_head and count_readout and not count_head:
        raise ValueError("with where_own_head the count read-out reads the count head's output: it needs count_head")
    if link_head is None:
        link_head = 1 if colour_link else 0
    elif link_head and not colour_link:
        raise ValueError("link_head is the head the colour link is taught to: it needs colour_link")
    if cell_target and token_cell_start is not None:
        raise ValueError("token_cell_start is the tokens' cell in a plain stage 1b; cell_target balances stage 1b's terms "
                         "(token_cell_start=None, --token-cell-start off)")
    if cell_target and tower_cell_start is not None:
        raise ValueError("tower_cell_start is the cell for the tower alone; cell_target already teaches it from colour on "
                         "(tower_cell_start=None, --tower-cell-start off)")
    mllm_dtype = resolve_mllm_dtype(mllm_dtype)
    autocast = torch.bfloat16 if mllm_dtype == "bfloat16" else None
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.time()
    tokenizer = LlamaTokenizer.train(tokenizer_corpus(), out, vocab_size=500, hard_vocab_limit=False)  # saved into `out`
    config = default_config(tokenizer, vision_width)
    model = TokenPackerForCausalLM(config).train()
    head = PatchHead(config.vision_config.hidden_size * len(config.mm_vision_feature_layers),
                     cells=cell_target or tower_cell_start is not None,
                     balanced_centres=balanced_centres, balanced_shapes=balanced_shapes,
                     object_shape_weight=object_shape_weight)  # fmt: skip
    token_head = TokenHead(config.text_config.hidden_size, config.scale_factor,
                           cells=cell_target or token_cell_start is not None,
                           balanced_centres=balanced_centres, mark_values=mark_values, mark_weight=mark_weight)  # fmt: skip
    quota = BRANCH_QUOTA if branches else None
    make = ExampleMaker(tokenizer, config, max_turns=max_turns, colour_link=colour_link, count_view=count_view,
                        count_mark=count_mark, count_spread=count_spread, count_head=count_head, branches=quota)  # fmt: skip
    pipeline = TokenPackerPipeline(model, tokenizer, source=str(out))  # for saving checkpoints on the way

    if resume_from is not None:
        if not polish_steps:
            raise ValueError("--resume-from runs stage 3 only: give it --polish-steps > 0")
        record = Path(resume_from) / "training.json"
        if not record.is_file():
            raise ValueError(f"{resume_from} is not a checkpoint of this recipe (no training.json)")
        done = json.loads(record.read_text()).get("polish_steps", 0)
        if done:
            raise ValueError(f"{resume_from} has had stage 3 already ({done} steps); resume from a checkpoint of "
                             "stages 1-2 (trained with --polish-steps 0)")  # fmt: skip
        resumed = load(resume_from, device="cpu")
        pieces = lambda t: [t.id_to_piece(i) for i in range(len(t))]
        if pieces(resumed.tokenizer) != pieces(tokenizer):
            raise ValueError(f"{resume_from}'s tokenizer is not this recipe's; resume from a checkpoint of this recipe")
        model.load_state_dict(resumed.model.state_dict())
    elif tower_from is None:
        if sincos_position:
            with torch.no_grad():
                model.model.vision_tower.vision_tower.embeddings.position_embedding.weight.copy_(
                    sincos_position_embedding(config.raw_grid, config.vision_config.hidden_size))
        pretrain_vision(model, head, make, rng, vision_steps, shape_steps, batch_size=6, lr=vision_lr, log_every=log_every,
                        cell_start=tower_cell_start)  # fmt: skip
        pipeline.save_pretrained(out)  # the tower, usable as `--tower-from` (later saves keep it: it stays frozen)
    else:
        record = Path(tower_from) / "training.json"
        had = json.loads(record.read_text()).get("small_object_steps", 0) if record.is_file() else 0
        if had and small_object_steps:
            raise ValueError(f"{tower_from} has had stage 1c already ({had} steps): its tower is not stage 1's alone; "
                             "take the tower of a checkpoint trained without --small-object-steps")
        donor = load(tower_from, device="cpu").model
        donor_width = donor.config.vision_config.hidden_size
        if donor_width != config.vision_config.hidden_size:
            raise ValueError(f"{tower_from}'s tower is {donor_width} wide and this run's {config.vision_config.hidden_size}: "
                             f"give --vision-width {donor_width} to take its tower")
        model.model.vision_tower.load_state_dict(donor.model.vision_tower.state_dict())
        print(f"stage 1: the tower of {tower_from}", flush=True)
    if resume_from is None and small_object_steps:
        torch.manual_seed(seed + 4)
        rng = random.Random(seed + 4)
        fresh = PatchHead(head.colors.in_features, cells=head.cells is not None, balanced_centres=balanced_centres,
                          balanced_shapes=balanced_shapes, object_shape_weight=object_shape_weight)  # fmt: skip
        pretrain_vision(model, fresh, make, rng, small_object_steps, small_object_shape_steps, batch_size=6, lr=vision_lr, log_every=log_every,
                        cell_start=0, split=SMALL_OBJECTS_SPLIT, head_steps=small_object_head_steps,
                        name="small-object")  # fmt: skip
        pipeline.save_pretrained(out)
    model.model.vision_tower.requires_grad_(False)
    if resume_from is None:
        torch.manual_seed(seed + 1)
        rng = random.Random(seed + 1)
        pretrain_projector(model, token_head, make, rng, projector_steps, projector_color_steps, batch_size=6, lr=vision_lr,
                           log_every=log_every, cell_start=token_cell_start, mark_steps=projector_mark_steps)  # fmt: skip
        pipeline.save_pretrained(out)  # what reaches the LLM, before it trains
    if not (token_cell_stage2 or cell_target):
        token_head.cells = None  # stage 2's dense probe keeps colour, shape and centres; the cell stays what 1b made it
    inference_attention = model.config._attn_implementation
    model.set_attn_implementation(TRAINING_ATTENTION)
    model.train()
    times = {}
    full_range = lambda rng: SPLITS["small"] if rng.random() < small_share else SPLITS["standard"]
    if resume_from is None:
        torch.manual_seed(seed + 2)
        rng = random.Random(seed + 2)

        def stage2_split(step: int) -> dict:  # small canvases first, then the task's full range
            return WARMUP_SPLIT if step < warmup_steps else full_range(rng)

        weights = dict(key=key_weight, patch=patch_weight, attention=attention_weight, where=where_weight,
                       where_attention=where_attention, count_layer=count_layer, link_head=link_head,
                       per_row=per_row_attention, where_answer=where_answer_weight, where_answer_steps=where_answer_steps)
        head_size = config.text_config.hidden_size // config.text_config.num_attention_heads
        where_head = (WhereHead(head_size, counts=count_readout, head=WHERE_HEAD) if where_own_head
                      else WhereHead(config.text_config.hidden_size, counts=count_readout)) if where_weight else None  # fmt: skip
        times["seconds_stage2"], history, scores = train_mllm(
            model, token_head, make, rng, steps, lr, batch_size, stage2_split, weights, log_every, "step",
            save=lambda: pipeline.save_pretrained(out), save_every=save_every, where_head=where_head,
            where_start=where_start, autocast=autocast)  # fmt: skip
    else:
        print(f"stages 1-2: the model of {resume_from}", flush=True)
    if polish_steps:
        # Stage 3 starts from what stage 2 leaves and nothing else (the checkpoint holds all of it: no dense probe,
        # whose TokenHead is not saved; a fresh optimizer), so that `resume_from` gives what a full run gives.
        torch.manual_seed(seed + 3)
        rng = random.Random(seed + 3)
        dense = ExampleMaker(tokenizer, config, max_turns=polish_max_turns, min_turns=polish_min_turns,
                             colour_link=colour_link, count_view=count_view, count_mark=count_mark,
                             count_spread=count_spread, count_head=count_head, branches=quota)
        weights = dict(key=key_weight, patch=0.0, attention=attention_weight, where=0.0, where_attention=where_attention,
                       count_layer=count_layer, link_head=link_head, per_row=per_row_attention)
        times["seconds_stage3"], history, scores = train_mllm(
            model, None, dense, rng, polish_steps, polish_lr, batch_size, lambda step: full_range(rng), weights,
            log_every, "polish step", save=lambda: pipeline.save_pretrained(out), save_every=save_every, warmup=10,
            autocast=autocast)  # fmt: skip
    model.set_attn_implementation(inference_attention)
    recent = _mean_over_steps(history[-log_every:]) if history else None  # None: `steps=0`, stopped after stage 1b
    summary = {"seed": seed, "steps": steps, "vision_steps": vision_steps, "shape_steps": shape_steps, "projector_steps": projector_steps, "projector_color_steps": projector_color_steps, "warmup_steps": warmup_steps,
               "batch_size": batch_size, "lr": lr, "vision_lr": vision_lr, "max_turns": max_turns,
               "small_share": small_share, "patch_weight": patch_weight, "key_weight": key_weight,
               "attention_weight": attention_weight, "where_weight": where_weight, "where_start": where_start, "sincos_position": sincos_position, "cell_target": cell_target, "colour_link": colour_link, "link_head": link_head, "mllm_dtype": mllm_dtype, "where_attention": where_attention, "count_view": count_view, "balanced_centres": balanced_centres, "count_mark": count_mark, "count_spread": count_spread, "count_head": count_head, "count_layer": count_layer, "mark_values": mark_values, "count_readout": count_readout, "tower_cell_start": tower_cell_start, "where_own_head": where_own_head, "token_cell_start": token_cell_start, "token_cell_stage2": token_cell_stage2, "branches": quota, "mark_weight": mark_weight, "projector_mark_steps": projector_mark_steps, "per_row_attention": per_row_attention, "where_answer_weight": where_answer_weight, "where_answer_steps": where_answer_steps, "balanced_shapes": balanced_shapes, "small_object_steps": small_object_steps, "small_object_head_steps": small_object_head_steps, "small_object_shape_steps": small_object_shape_steps, "vision_width": vision_width, "object_shape_weight": object_shape_weight,
               "polish_steps": polish_steps, "polish_lr": polish_lr,
               "polish_turns": [polish_min_turns, polish_max_turns],
               "tower_from": str(tower_from) if tower_from else None, "resume_from": str(resume_from) if resume_from else None,
               "torch": torch.__version__, "seconds_total": round(time.time() - started), **times,
               "final_answer_loss": None if recent is None else round(float(recent[0]), 4),
               "final_patch_loss": None if recent is None else round(float(recent[1]), 4),
               "final_train_accuracy": _accuracy_line(scores[-log_every:])}  # fmt: skip
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return TokenPackerPipeline(model.eval(), tokenizer, source=str(out))


def train_mllm(model: TokenPackerForCausalLM, token_head: TokenHead | None, make: ExampleMaker, rng: random.Random, steps: int,
               lr: float, batch_size: int, split_for_step, weights: dict, log_every: int, tag: str, save, save_every: int,
               warmup: int | None = None, where_head: WhereHead | None = None, where_start: int = 0,
               autocast: torch.dtype | None = torch.bfloat16) -> tuple[float, list, list]:  # fmt: skip
    """Stages 2 and 3: the projector and the LLM (and the TokenHead and WhereHead, if any) on scenes' questions, AdamW, a linear
    warm-up (`warmup` steps, by default a 20th of the steps, at most 100) then one cosine to 0 over `steps`; the
    scenes of each step from `split_for_step(step)`, computed under `autocast` (None: float32). Loss: the answers' + the weighted key-word, dense-probe and
    attention and `where` terms (`batch_loss`; the `where` term from step `where_start` on). -> (seconds, per-step loss history, per-step answer scores)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    named += [(f"token_head.{n}", p) for n, p in token_head.named_parameters()] if token_head is not None else []
    named += [(f"where_head.{n}", p) for n, p in where_head.named_parameters()] if where_head is not None else []
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98))  # fmt: skip
    warmup = warmup or max(1, min(100, steps // 20))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
    )
    start, history, scores, link_masses = time.time(), [], [], []
    for step in range(steps):
        split = split_for_step(step)
        examples = [make(rng, split) for _ in range(batch_size)]
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):  # disabled: float32
            answer_loss, key_loss, patch_loss, attention_loss, where_loss, masses, batch_scores = batch_loss(
                model, token_head, examples, where_head, weights.get("where_attention", 1.0),
                weights.get("count_layer", KEY_LAYER), weights.get("link_head", 0), weights.get("per_row", False),
                weights.get("where_answer", 1.0) if step < weights.get("where_answer_steps", 0) else 1.0)
        loss = answer_loss + weights["key"] * key_loss + weights["patch"] * patch_loss + weights["attention"] * attention_loss
        if step >= where_start:  # before it the WhereHead gets no gradient (AdamW skips it) and the LLM none from it
            loss = loss + weights["where"] * where_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        schedule.step()
        history.append((answer_loss.item(), patch_loss.item(), key_loss.item(), attention_loss.item(),
                        masses.get(KEY_LAYER, np.nan), masses.get(ANSWER_LAYER, np.nan), where_loss.item(),
                        masses.get((weights.get("count_layer", KEY_LAYER), COUNT_HEAD), np.nan),
                        masses.get((KEY_LAYER, WHERE_HEAD), np.nan)))  # fmt: skip
        link_masses.append(masses["link"])  # nan: no link in the batch (or links off)
        scores.append(batch_scores)
        if (step + 1) % log_every == 0:
            recent = _mean_over_steps(history[-log_every:])
            print(f"{tag} {step + 1}/{steps}  answer loss {recent[0]:.4f}  key-word loss {recent[2]:.4f}  patch loss {recent[1]:.4f}  "
                  f"attention loss {recent[3]:.4f} (mass on target: key word {recent[4]:.2f}, answer {recent[5]:.2f}"
                  + (f", colour link {_mean_over_steps(link_masses[-log_every:]):.2f}" if make.colour_link else "")
                  + (f", count head {recent[7]:.2f}" if make.count_head else "")
                  + (f", where head {recent[8]:.2f}" if where_head is not None and where_head.head is not None else "") + ")  "
                  + (f"{'read-out loss (where + count)' if where_head is not None and where_head.counts is not None else 'where read-out loss'} "
                     f"{recent[6]:.4f}  " if where_head is not None else "") +
                  f"lr {schedule.get_last_lr()[0]:.2e}  {time.time() - start:.0f}s  "
                  f"train acc {_accuracy_line(scores[-log_every:])}", flush=True)  # fmt: skip
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save()  # a usable checkpoint at every stage of a long run
    return time.time() - start, history, scores


def _mean_over_steps(rows: list) -> np.ndarray:
    """Per-column mean over some steps' log rows, skipping nan (a measurement the step had no target for, e.g. no
    colour link in its batch); nan, without numpy's "Mean of empty slice" warning, where no step had one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(rows, dtype=float), axis=0)


def _accuracy_line(batches: list[list[tuple[str, bool]]]) -> str:
    """Teacher-forced answer accuracy per question type over some steps, e.g. 'color 0.91 shape 0.88 ...'."""
    flat = [score for batch in batches for score in batch]
    parts = []
    for kind in QUESTION_TYPES:
        hits = [right for k, right in flat if k == kind]
        if hits:
            parts.append(f"{kind} {np.mean(hits):.2f}")
    return " ".join(parts)


def step_or_off(text: str) -> int | None:
    """A step number, or 'off' (None)."""
    return None if text == "off" else int(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("assets/default-model"))
    parser.add_argument("--steps", type=int, default=1250, help="MLLM steps (stage 2)")
    parser.add_argument("--vision-steps", type=int, default=1600, help="dense vision pretraining steps (stage 1)")
    parser.add_argument("--shape-steps", type=int, default=800, help="first stage-1 steps that learn shape alone")
    parser.add_argument("--projector-steps", type=int, default=1400, help="most dense projector pretraining steps (stage 1b)")
    parser.add_argument("--projector-color-steps", type=int, default=200, help="stage 1b's first steps, on colour alone")
    parser.add_argument("--warmup-steps", type=int, default=600, help="first MLLM steps on small canvases")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=8e-4, help="MLLM peak learning rate (2e-3 diverges)")
    parser.add_argument("--vision-lr", type=float, default=1e-3)
    parser.add_argument("--attention-weight", type=float, default=0.5, help="weight of the attention supervision")
    parser.add_argument("--tower-from", type=Path, help="take stage 1's tower from this checkpoint of the recipe")
    parser.add_argument("--polish-steps", type=int, default=150, help="stage 3: full-range steps at a small learning rate")
    parser.add_argument("--polish-lr", type=float, default=2.5e-4, help="stage 3's peak learning rate")
    parser.add_argument("--resume-from", type=Path, help="take stages 1-2 (the whole model) from this checkpoint of the recipe")
    parser.add_argument("--where-weight", type=float, default=1.0, help="stage 2's weight of the `where` read-out (0: none)")
    parser.add_argument("--where-start", type=int, default=0, help="stage 2's first step with the `where` read-out")
    parser.add_argument("--position-start", choices=["sincos", "clip"], default="sincos",
                        help="the tower's position embedding starts as a 2-D sine-cosine table or CLIP's random one")
    parser.add_argument("--cell-target", action="store_true",
                        help="the 3 x 3 cell as a target of the tower's patches and the object point tokens (stages 1-2)")
    parser.add_argument("--mllm-dtype", choices=["auto", "bfloat16", "float32"], default="bfloat16",
                        help="stages 2-3: bfloat16 autocast (the recipe) or float32 (8x faster on a CPU without native "
                             "bfloat16, not bit-reproducible); auto: float32 on such a CPU")
    parser.add_argument("--colour-link", action=argparse.BooleanOptionalAction, default=True,
                        help="stages 2-3 teach layer 0 to bring a `where` / `exists` key word its colour word")
    parser.add_argument("--link-head", type=int, help="with --colour-link: the head of layer 0 taught it (default 1)")
    parser.add_argument("--count-view", choices=["tiles", "global"], default="tiles",
                        help="stages 2-3: the view whose centre tokens counting's key word is taught to find")
    parser.add_argument("--where-attention", type=float, default=1.0,
                        help="stages 2-3: weight of the `where` key words' attention loss (the other key words' is 1)")
    parser.add_argument("--balanced-centres", action="store_true",
                        help="stages 1-2: the object-centre terms weigh the rare centres as much as the rest")
    parser.add_argument("--count-mark", choices=list(COUNT_MARKS), default="first",
                        help="stages 1-3: an object's one mark, taught to the tower, the point tokens and counting's key "
                             "word: the patch under its centre, its first patch in reading order, or its first "
                             "patch at least half covered")
    parser.add_argument("--count-spread", action="store_true",
                        help="stages 2-3: counting's key word is taught 1/(n+1) of its attention on <s> and on each of "
                             "its n marks' tokens (an output that says n), not its mass on the marks")
    parser.add_argument("--count-head", action="store_true",
                        help="stages 2-3: the same even spread over <s> and the marks, taught to a head of its own "
                             "(layer --count-layer, head 1); head 0 keeps its mass on the marks")
    parser.add_argument("--count-layer", type=int, default=KEY_LAYER, help="the count head's layer")
    parser.add_argument("--mark-values", action="store_true",
                        help="stages 1b-2: the dense probe also regresses each point token's mark of each shape from "
                             "the token at unit RMS, so that every mark reads the same in one direction")
    parser.add_argument("--count-readout", action="store_true",
                        help="stage 2: the `where` read-out also reads each counting answer from its key word after "
                             "layer 1 (same weight and start); with --where-head from the count head's output there "
                             "(needs --count-head)")
    parser.add_argument("--tower-cell-start", type=step_or_off, default=1000,
                        help="stage 1: the 3 x 3 cell as a target of the tower's patches alone, from this step on "
                             "('off': never)")
    parser.add_argument("--where-head", action=argparse.BooleanOptionalAction, default=True,
                        help="stage 2: the `where` read-out reads layer 1's head 2 at the key word, and that head is "
                             "taught the `where` key word's objects (--no-where-head: the key word's hidden state)")
    parser.add_argument("--token-cell-start", type=step_or_off, default=400,
                        help="stage 1b: the object point tokens' cell as a target, from this step on ('off': never; "
                             "in stage 2 too with --token-cell-in-stage2)")
    parser.add_argument("--token-cell-in-stage2", action=argparse.BooleanOptionalAction, default=False,
                        help="with --token-cell-start: the tokens' cell a target of stage 2's dense probe too (run AG)")
    parser.add_argument("--branches", action=argparse.BooleanOptionalAction, default=True,
                        help="stages 2-3: each scene's questions (BRANCH_QUOTA of each type) asked as single-turn branches "
                             "sharing one visual prefix; --no-branches: one multi-turn conversation a scene (run AB's "
                             "recipe with --tower-cell-start off --token-cell-start off --no-where-head "
                             "--warmup-steps 1400 --steps 1900 --polish-steps 250 --projector-steps 1000)")
    parser.add_argument("--mark-weight", type=float, default=1.0,
                        help="stages 1b-2: weight of the point tokens' count-mark (object centre) term in the dense probe")
    parser.add_argument("--projector-mark-steps", type=int, default=0,
                        help="stage 1b: first steps on the point tokens' count mark alone, before the colour steps")
    parser.add_argument("--per-row-attention", action=argparse.BooleanOptionalAction, default=False,
                        help="stages 2-3: the branch mask's attention row by row (causal prefix, masked branches; faster)")
    parser.add_argument("--where-answer-weight", type=float, default=1.0,
                        help="stage 2: weight of the `where` answers' tokens in the answer loss (the others' 1), in its "
                             "first --where-answer-steps steps")
    parser.add_argument("--where-answer-steps", type=int, default=600,
                        help="stage 2's first steps with --where-answer-weight")
    parser.add_argument("--balanced-shapes", action="store_true",
                        help="stage 1: each object's outline patches in a view weigh as much together in the shape "
                             "term as another object's (not each patch as much as another)")
    parser.add_argument("--small-object-steps", type=int, default=0,
                        help="stage 1c: more tower steps on scenes of small objects only (0: none)")
    parser.add_argument("--small-object-head-steps", type=int, default=100,
                        help="stage 1c's first steps, its fresh read-out alone")
    parser.add_argument("--small-object-shape-steps", type=int, default=0,
                        help="stage 1c's first steps that learn shape alone")
    parser.add_argument("--vision-width", type=int, default=64, help="the tower's width (its MLP 3x that)")
    parser.add_argument("--object-shape-weight", type=float, default=0.0,
                        help="stages 1 and 1c: the weight of a shape term on each object's outline patches pooled "
                             "(0: none)")
    args = parser.parse_args(argv)
    train(args.out, steps=args.steps, vision_steps=args.vision_steps, shape_steps=args.shape_steps,
          projector_steps=args.projector_steps, projector_color_steps=args.projector_color_steps, warmup_steps=args.warmup_steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr, vision_lr=args.vision_lr,
          attention_weight=args.attention_weight, tower_from=args.tower_from, polish_steps=args.polish_steps,
          polish_lr=args.polish_lr, resume_from=args.resume_from, where_weight=args.where_weight,
          where_start=args.where_start, sincos_position=args.position_start == "sincos", cell_target=args.cell_target,
          colour_link=args.colour_link, link_head=args.link_head, mllm_dtype=args.mllm_dtype, where_attention=args.where_attention,
          count_view=args.count_view, balanced_centres=args.balanced_centres, count_mark=args.count_mark,
          count_spread=args.count_spread, count_head=args.count_head, count_layer=args.count_layer,
          mark_values=args.mark_values, count_readout=args.count_readout, tower_cell_start=args.tower_cell_start,
          where_own_head=args.where_head, token_cell_start=args.token_cell_start,
          token_cell_stage2=args.token_cell_in_stage2, branches=args.branches, mark_weight=args.mark_weight,
          projector_mark_steps=args.projector_mark_steps, per_row_attention=args.per_row_attention,
          where_answer_weight=args.where_answer_weight, where_answer_steps=args.where_answer_steps,
          balanced_shapes=args.balanced_shapes, small_object_steps=args.small_object_steps,
          small_object_head_steps=args.small_object_head_steps, small_object_shape_steps=args.small_object_shape_steps,
          vision_width=args.vision_width, object_shape_weight=args.object_shape_weight)


if __name__ == "__main__":
    main()
