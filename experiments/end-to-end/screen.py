"""Screen a stage-2 change cheaply: continue stage 2 of a checkpoint on one split and log teacher-forced accuracy.

    python experiments/end-to-end/screen.py CKPT STEPS [--tower] [--min-turns A --max-turns B] [--split warmup|standard]
                                            [--oracle-position SCALE] [--position-probe W] [--colour-link] [--where-attention W] [--count-view tiles|global] [--save DIR]

Starts from CKPT's tower, projector and LLM (a fresh TokenHead), trains as stage 2 does (`batch_loss`, same
loss weights), at a constant learning rate. `--tower` trains the vision tower too (stage 2 freezes it).
`--oracle-position SCALE` is a diagnostic, not a model change: it adds to every point token a fixed 2-D sine-cosine
code of its place on the view's G x G grid (SCALE times the tokens' mean norm), so that the LLM gets position in the
tokens for free, and shows whether `where` is then learnt (the bottleneck is getting position into the tokens) or
not (it is the LLM's side).
`--position-probe WEIGHT` supervises the retrieval's output: a training-only linear read-out of the answer's row and
column from each `where` key word's hidden state after layer KEY_LAYER (where head 0 is taught to find the object),
its cross-entropy times WEIGHT added to the loss; its accuracy is logged.
`--colour-link` teaches head 0 of layer COLOUR_LINK_LAYER at each `where`/`exists` key word (the shape word) to
attend to the colour word before it (`ExampleMaker(colour_link=True)`), so that layer KEY_LAYER's query can hold
both; the mean attention mass on the key word's target (layer KEY_LAYER) and on the colour word is logged.
`--where-attention W`: the `where` key words' attention loss weighs W (the other key words' 1); their own mass on
target is logged in brackets after the key words' mean. `--count-view global`: counting's key word is taught to
find the centre tokens in the global view, not in the tiles (`attention_target`)."""

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.scenes import COLUMNS, ROWS, SPLITS

sys.path.insert(0, str(Path(__file__).parent.parent / "where-oracle"))
from oracle import add_oracle_position  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("ckpt", type=Path)
parser.add_argument("steps", type=int)
parser.add_argument("--tower", action="store_true")
parser.add_argument("--tower-lr", type=float, default=3e-4)
parser.add_argument("--lr", type=float, default=3e-4)
parser.add_argument("--min-turns", type=int, default=1)
parser.add_argument("--max-turns", type=int, default=8)
parser.add_argument("--split", default="warmup")
parser.add_argument("--seed", type=int, default=99)
parser.add_argument("--oracle-position", type=float, default=0.0)
parser.add_argument("--position-probe", type=float, default=0.0)
parser.add_argument("--colour-link", action="store_true")
parser.add_argument("--where-attention", type=float, default=1.0)
parser.add_argument("--count-view", choices=["tiles", "global"], default="tiles")
parser.add_argument("--log-every", type=int, default=25)
parser.add_argument("--save", type=Path, help="save the screened model here")
args = parser.parse_args()

torch.manual_seed(args.seed)
rng = random.Random(args.seed)
pipe = load(args.ckpt, device="cpu")
model, tokenizer = pipe.model.train(), pipe.tokenizer
model.requires_grad_(True)
model.model.vision_tower.requires_grad_(args.tower)
model.set_attn_implementation(T.TRAINING_ATTENTION)
if args.oracle_position:
    add_oracle_position(model, args.oracle_position)
token_head = T.TokenHead(model.config.text_config.hidden_size, model.config.scale_factor)
position_head = torch.nn.Linear(model.config.text_config.hidden_size, len(ROWS) + len(COLUMNS))
shifts, retrieved = [], {}  # per example of the batch: visual length - 1; the hidden state after KEY_LAYER
build_inputs_embeds = model.build_inputs_embeds


def recording_build_inputs_embeds(input_ids, visual):
    shifts.append(visual.shape[0] - 1)
    return build_inputs_embeds(input_ids, visual)


model.build_inputs_embeds = recording_build_inputs_embeds
model.model.layers[T.KEY_LAYER].register_forward_hook(lambda module, inputs, output: retrieved.update(hidden=output))
piece = tokenizer.id_to_piece


def where_targets(examples):
    """-> (batch rows, sequence positions of the `where` key words, row labels, column labels)."""
    found = []
    for i, (_, ids, (_, keys, answer_rows, _, _), _) in enumerate(examples):
        for (position, _, _), (before_first, _) in zip(keys, answer_rows):
            words = [piece(ids[before_first + 1]).lstrip("▁"), piece(ids[before_first + 2]).lstrip("▁")]
            if words[0] == "center":
                found.append((i, position + shifts[i], ROWS.index("middle"), COLUMNS.index("center")))
            elif words[0] in ROWS:
                found.append((i, position + shifts[i], ROWS.index(words[0]), COLUMNS.index(words[1])))
    return [torch.tensor(column) for column in zip(*found)] if found else None


position_scores = []
make = T.ExampleMaker(tokenizer, model.config, max_turns=args.max_turns, min_turns=args.min_turns,
                     colour_link=args.colour_link, count_view=args.count_view)  # fmt: skip
split = T.WARMUP_SPLIT if args.split == "warmup" else SPLITS[args.split]
groups = [{"params": [p for n, p in model.named_parameters() if "vision_tower" not in n] + list(token_head.parameters())
           + (list(position_head.parameters()) if args.position_probe else []), "lr": args.lr}]
if args.tower:
    groups.append({"params": list(model.model.vision_tower.parameters()), "lr": args.tower_lr})
optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.0)
params = [p for g in groups for p in g["params"]]
start, scores, answers, key_masses, link_masses, where_masses = time.time(), [], [], [], [], []
for step in range(args.steps):
    examples = [make(rng, split) for _ in range(8)]
    shifts.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        answer_loss, key_loss, patch_loss, attention_loss, _, masses, batch_scores = T.batch_loss(
            model, token_head, examples, where_attention=args.where_attention)
    loss = answer_loss + key_loss + 0.3 * patch_loss + 0.5 * attention_loss
    targets = where_targets(examples)
    if args.position_probe and targets is not None:
        rows, positions, row_labels, column_labels = targets
        logits = position_head(retrieved["hidden"][rows, positions].float())
        row_logits, column_logits = logits[:, : len(ROWS)], logits[:, len(ROWS) :]
        loss = loss + args.position_probe * (F.cross_entropy(row_logits, row_labels) + F.cross_entropy(column_logits, column_labels))
        position_scores.append(((row_logits.argmax(-1) == row_labels).float().mean().item(),
                                (column_logits.argmax(-1) == column_labels).float().mean().item()))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scores.append(batch_scores)
    key_masses.append(masses.get(T.KEY_LAYER, np.nan))
    link_masses.append(masses.get(T.COLOUR_LINK_LAYER, np.nan))
    where_masses.append(masses["where"])
    answers.append(len(batch_scores))
    if (step + 1) % args.log_every == 0:
        print(f"step {step + 1}  answers/step {np.mean(answers[-args.log_every:]):.1f}  {time.time() - start:.0f}s  "
              f"mass key word {np.nanmean(key_masses[-args.log_every:]):.2f} (where {np.nanmean(where_masses[-args.log_every:]):.2f})"
              + (f" colour link {np.nanmean(link_masses[-args.log_every:]):.2f}" if args.colour_link else "")
              + f"  train acc {T._accuracy_line(scores[-args.log_every:])}"
              + (f"  position probe row / column {np.mean([r for r, _ in position_scores[-args.log_every:]]):.2f} / "
                 f"{np.mean([c for _, c in position_scores[-args.log_every:]]):.2f}" if position_scores else ""), flush=True)
if args.save:
    pipe.save_pretrained(args.save)
