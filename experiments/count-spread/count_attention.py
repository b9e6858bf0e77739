"""Where counting's key word looks: head 0 of layer KEY_LAYER at 'objects' / '{shape}s', teacher-forced on fresh
standard-split conversations, by question and true count n.

    PYTHONPATH=. python experiments/count-spread/count_attention.py CHECKPOINT [CONVERSATIONS]

Per (question, n): how many, the answer's accuracy, the mean number of distinct mark tokens (n unless two marks share
a token), head 0's mean mass on <s>, on all the mark tokens together, and on the rest; and the marks' evenness, the
mean over questions of (least / most mass on one mark token). Taught with `--count-spread`, <s> and each mark should
get 1/(n+1): for n = 1..5, <s> 0.50, 0.33, 0.25, 0.20, 0.17, marks 1 - that, evenness 1. The marks are the
checkpoint's own (`count_mark` in its training.json), in the tiles (or the only view)."""

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

pipeline = load(sys.argv[1], device="cpu")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
recipe = json.loads((Path(sys.argv[1]) / "training.json").read_text())
model, tokenizer = pipeline.model.eval(), pipeline.tokenizer
model.set_attn_implementation(T.TRAINING_ATTENTION)
mark = recipe.get("count_mark", "centre")
make = T.ExampleMaker(tokenizer, pipeline.config, count_mark=mark, count_spread=True)  # targets: <s>, then the marks
rng = random.Random(2468)
rows = defaultdict(list)  # (kind, n) -> [(right, marks, <s>, on marks, rest, evenness)]
for _ in range(count):
    prepared, ids, taught, labels = example = make(rng, SPLITS["standard"])
    scores, attention = key_word_attention(model, example)  # attention: (keys, T)
    for (start, end, kind), (_, hit), (_, _, targets), row in zip(taught.spans, scores, taught.keys, attention):
        if kind not in ("count", "count_shape"):
            continue
        n = int(tokenizer.decode(ids[start:end]).replace("</s>", "").strip())
        marks = row[torch.as_tensor(targets[1:], dtype=torch.long)] if len(targets) > 1 else torch.zeros(0)
        evenness = (marks.min() / marks.max()).item() if len(marks) else np.nan
        rows[kind, n].append((hit, len(marks), row[0].item(), marks.sum().item(),
                              1 - row[0].item() - marks.sum().item(), evenness))  # fmt: skip
print(f"# {sys.argv[1]} (count_mark {mark}, count_spread {recipe.get('count_spread', False)}), {count} conversations; "
      f"head 0 of layer {T.KEY_LAYER} at counting's key word")  # fmt: skip
print(f"{'question':<12} {'n':>2} {'asked':>5} {'acc':>5} {'marks':>6} {'<s>':>6} {'on marks':>8} {'rest':>6} {'evenness':>8}")
for kind, n in sorted(rows):
    r = np.array(rows[kind, n], dtype=float)
    print(f"{kind:<12} {n:>2} {len(r):>5} {r[:, 0].mean():>5.2f} {r[:, 1].mean():>6.2f} {r[:, 2].mean():>6.3f} "
          f"{r[:, 3].mean():>8.3f} {r[:, 4].mean():>6.3f} {np.nanmean(r[:, 5]) if n else np.nan:>8.2f}")  # fmt: skip
