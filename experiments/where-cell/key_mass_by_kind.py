"""How much of head 0's attention at the question's key word (layer KEY_LAYER) lands on its target, by question
type, teacher-forced on fresh conversations (the training attention probe of train.py; needs run-h.patch).

    [WHOLE=1] PYTHONPATH=. python experiments/where-cell/key_mass_by_kind.py CHECKPOINT [CONVERSATIONS]

WHOLE=1: for `where`, the mass on all of the object's tokens in the global view (run E's target), not on its
centre token alone."""

import os
import random
import sys
from collections import defaultdict

import numpy as np
import torch

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import SPLITS

pipeline = load(sys.argv[1], device="cpu")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 60
model, head = pipeline.model.eval(), T.TokenHead(pipeline.config.text_config.hidden_size, pipeline.config.scale_factor)
model.set_attn_implementation(T.TRAINING_ATTENTION)
make = T.ExampleMaker(pipeline.tokenizer, pipeline.config)
rng = random.Random(4321)
recorded, original = [], T.attention_target_loss


def recording(log_probs, targets, spread):
    recorded.append([torch.logsumexp(log_probs[i, torch.as_tensor(t)], -1).exp().item() for i, t in enumerate(targets)])
    return original(log_probs, targets, spread)


T.attention_target_loss = recording
if os.environ.get("WHOLE"):
    centre_only = T.attention_target

    def whole_object(kind, question, answer, masks, layout):
        if kind != "where":
            return centre_only(kind, question, answer, masks, layout)
        color, shape = question.rstrip("?").split()[-2:]
        mask = masks[f"color{1 + list(T.COLORS).index(color)}"] & masks[f"shape{1 + T.SHAPES.index(shape)}"]
        return (mask & masks["global"][:, None, None])[layout.view_index, layout.gy, layout.gx]

    T.attention_target = whole_object
masses = defaultdict(list)
with torch.no_grad():
    for _ in range(count):
        example = make(rng, SPLITS["standard"])
        recorded.clear()
        T.batch_loss(model, head, [example])
        kinds = [kind for *_, kind in example[2].spans]
        key_rows = recorded[0]  # KEY_LAYER's rows come first (dict order), one per key word
        assert len(key_rows) == len(example[2].keys) == len(kinds)
        for kind, mass in zip(kinds, key_rows):
            masses[kind].append(mass)
for kind in sorted(masses):
    print(f"{kind}: mass on target {np.mean(masses[kind]):.3f} (median {np.median(masses[kind]):.3f}, n={len(masses[kind])})")
