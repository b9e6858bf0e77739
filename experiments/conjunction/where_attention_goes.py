"""Where head 0's attention at the key word goes (layer KEY_LAYER, the retrieval the training supervises), split
by what each point token shows, teacher-forced on fresh standard-split conversations.

    PYTHONPATH=. python experiments/conjunction/where_attention_goes.py CHECKPOINT [CONVERSATIONS]

For `Is there a red circle?` / `Where is the red circle?` (key word 'circle'; a conjunction of two attributes)
and, for reference, `What color is the circle?` (key word 'circle'; one attribute): the mean attention mass on
tokens showing the target (red and circle), the same shape in another colour, the same colour in another shape,
other objects, the background, <s>, and the rest (text, separators). A token shows what any patch of its
region shows, so one token can show two objects; each token is counted once, in the first class it fits. The last
column, "target in tiles", is the part of the target's mass on its tokens in the HD tiles (not the global view,
where `where` is taught to look: a tile's tokens know their place in the tile, not in the image)."""

import random
import sys
from collections import defaultdict

import numpy as np
import torch

from experiments.key_attention import key_word_attention
from tokenpacker.configuration import IMAGE_TOKEN_INDEX
from tokenpacker.layout import build_layout
from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import COLORS, SHAPES, SPLITS

pipeline = load(sys.argv[1], device="cpu")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 80
model, tokenizer = pipeline.model.eval(), pipeline.tokenizer
model.set_attn_implementation(T.TRAINING_ATTENTION)
make = T.ExampleMaker(tokenizer, pipeline.config)
rng = random.Random(4321)
CLASSES = ["target", "same shape, other colour", "same colour, other shape", "other objects", "background", "<s>", "rest",
           "target in tiles"]
mass = defaultdict(list)  # (kind, answer) -> [(7,) per question]
right = defaultdict(list)
for _ in range(count):
    prepared, ids, (spans, keys, rows, *_), labels = example = make(rng, SPLITS["standard"])
    scores, attention = key_word_attention(model, example)  # attention: (keys, T)
    layout = build_layout(prepared.image_size, prepared.views, prepared.mode, prepared.grid, make.point_grid,
                          start=ids.index(IMAGE_TOKEN_INDEX))  # fmt: skip
    masks = T.token_masks(labels, prepared.views, make.point_grid)
    at = lambda m: m[layout.view_index, layout.gy, layout.gx]  # (tokens,) in layout order
    objects = at(np.any([masks[f"color{c + 1}"] for c in range(len(COLORS))], axis=0))
    assert len(keys) == len(spans) == len(scores) == len(attention)
    for (position, _, _), (start, end, kind), (_, hit), row in zip(keys, spans, scores, attention):
        if kind not in ("exists", "where", "color"):
            continue
        word = lambda p: tokenizer.id_to_piece(ids[p]).removeprefix("▁")
        shape_word = word(position)  # the key word
        color_word = word(position - 1) if kind != "color" else None
        shape = at(masks[f"shape{1 + SHAPES.index(shape_word)}"])
        color = at(masks[f"color{1 + list(COLORS).index(color_word)}"]) if color_word else np.ones_like(shape)
        classes = [shape & color, shape & ~color, color & ~shape & objects, objects & ~shape & ~color, ~objects]
        seen, shares = np.zeros_like(shape), []
        for c in classes:
            c = c & ~seen
            seen |= c
            shares.append(row[torch.as_tensor(layout.positions[c])].sum().item() if c.any() else 0.0)
        shares.append(row[0].item())
        shares.append(1.0 - sum(shares))
        tiles = classes[0] & ~at(masks["global"][:, None, None] & np.ones_like(masks["centre"]))
        shares.append(row[torch.as_tensor(layout.positions[tiles])].sum().item() if tiles.any() else 0.0)
        answer = tokenizer.decode(ids[start:end]).replace("</s>", "").strip()
        group = (kind, answer if kind == "exists" else "")
        mass[group].append(shares)
        right[group].append(hit)
print(f"# {sys.argv[1]}, {count} conversations; mean attention mass of head 0, layer {T.KEY_LAYER}, at the key word")
print(f"{'question':<14} {'n':>3} {'acc':>5}  " + "  ".join(f"{c:>10.10}" for c in CLASSES))
for group in sorted(mass):
    m = np.mean(mass[group], axis=0)
    name = " ".join(g for g in group if g)
    print(f"{name:<14} {len(mass[group]):>3} {np.mean(right[group]):>5.2f}  " + "  ".join(f"{x:>10.3f}" for x in m))
