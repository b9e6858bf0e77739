"""Where counting's key word looks: head 0 of layer KEY_LAYER at 'objects' / '{shape}s', teacher-forced on fresh
standard-split conversations, by question and true count n.

    PYTHONPATH=. python experiments/count-spread/count_attention.py CHECKPOINT [CONVERSATIONS] [--count-head]

Per (question, n): how many, the answer's accuracy, the mean number of distinct mark tokens (n unless two marks share
a token), head 0's mean mass on <s>, on all the mark tokens together, and on the rest; and the marks' evenness, the
mean over questions of (least / most mass on one mark token). Taught with `--count-spread`, <s> and each mark should
get 1/(n+1): for n = 1..5, <s> 0.50, 0.33, 0.25, 0.20, 0.17, marks 1 - that, evenness 1. The marks are the
checkpoint's own (`count_mark` in its training.json), in the tiles (or the only view). `--count-head`: the same for
head COUNT_HEAD of the checkpoint's `count_layer` (`--count-head` training, ../count-head/), taught that even spread."""

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from experiments.key_attention import key_word_attention
from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import SPLITS

arguments = [a for a in sys.argv[1:] if a != "--count-head"]
use_count_head = "--count-head" in sys.argv
pipeline = load(arguments[0], device="cpu")
count = int(arguments[1]) if len(arguments) > 1 else 200
recipe = json.loads((Path(arguments[0]) / "training.json").read_text())
model, tokenizer = pipeline.model.eval(), pipeline.tokenizer
model.set_attn_implementation(T.TRAINING_ATTENTION)
mark = recipe.get("count_mark", "centre")
count_layer = recipe.get("count_layer", T.KEY_LAYER)  # the count head's layer (run AC: KEY_LAYER, run AD: 0)
make = T.ExampleMaker(tokenizer, pipeline.config, count_mark=mark, count_spread=not use_count_head,
                      count_head=use_count_head)  # targets: <s>, then the marks
rng = random.Random(2468)
rows = defaultdict(list)  # (kind, n) -> [(right, marks, <s>, on marks, rest, evenness)]
for _ in range(count):
    prepared, ids, taught, labels = example = make(rng, SPLITS["standard"])
    if not any(kind in ("count", "count_shape") for *_, kind in taught.spans):
        continue
    scores, attention = key_word_attention(model, example, use_count_head, count_layer)  # (keys or counts, T)
    counting = [(span, score) for span, score in zip(taught.spans, scores) if span[2] in ("count", "count_shape")]
    if use_count_head:  # one row per counting key word, its targets <s> and the marks
        rows_and_targets = [(row, targets) for row, (_, targets) in zip(attention, taught.counts)]
    else:
        rows_and_targets = [(row, targets) for row, (_, _, targets), (_, _, kind) in
                            zip(attention, taught.keys, taught.spans) if kind in ("count", "count_shape")]  # fmt: skip
    for ((start, end, kind), (_, hit)), (row, targets) in zip(counting, rows_and_targets):
        n = int(tokenizer.decode(ids[start:end]).replace("</s>", "").strip())
        marks = row[torch.as_tensor(targets[1:], dtype=torch.long)] if len(targets) > 1 else torch.zeros(0)
        evenness = (marks.min() / marks.max()).item() if len(marks) else np.nan
        rows[kind, n].append((hit, len(marks), row[0].item(), marks.sum().item(),
                              1 - row[0].item() - marks.sum().item(), evenness))  # fmt: skip
print(f"# {arguments[0]} (count_mark {mark}, count_spread {recipe.get('count_spread', False)}, count_head "
      f"{recipe.get('count_head', False)}), {count} conversations; head {T.COUNT_HEAD if use_count_head else 0} of "
      f"layer {count_layer if use_count_head else T.KEY_LAYER} at counting's key word")  # fmt: skip
print(f"{'question':<12} {'n':>2} {'asked':>5} {'acc':>5} {'marks':>6} {'<s>':>6} {'on marks':>8} {'rest':>6} {'evenness':>8}")
for kind, n in sorted(rows):
    r = np.array(rows[kind, n], dtype=float)
    print(f"{kind:<12} {n:>2} {len(r):>5} {r[:, 0].mean():>5.2f} {r[:, 1].mean():>6.2f} {r[:, 2].mean():>6.3f} "
          f"{r[:, 3].mean():>8.3f} {r[:, 4].mean():>6.3f} {np.nanmean(r[:, 5]) if n else np.nan:>8.2f}")  # fmt: skip
