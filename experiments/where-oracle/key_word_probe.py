"""Does the object's position reach the `where` question's key word? Linear probes on the LLM's hidden states.

    PYTHONPATH=. python experiments/where-oracle/key_word_probe.py CKPT N [--oracle SCALE] [--split warmup|standard]

N fresh scenes, one `Where is the {color} {shape}?` each (teacher-forced prompt up to ASSISTANT:). At the object's
centre token (in the global view, or the only view), at the key word (the shape word) and at the last prompt token (which predicts the answer's first word), the hidden state after each
layer is collected; a logistic-regression probe per layer and position is fitted on 70% of the scenes for the answer's
row (top / middle / bottom) and column (left / center / right), scored on the other 30% (chance about 0.33 each); hidden state 0 is the input embeddings, L the last layer's (after the final norm).
Also the object's colour (6 classes): at the key word (the shape word) it says whether the colour word before it
has reached the query that retrieves the object.
`--oracle SCALE` adds the oracle position code to the point tokens first (`oracle.py`).
`--retrieval` adds two rows: "object mean", the mean hidden state over the point tokens the key word is taught to
attend to (what an even attention on its target would bring, before the value projection), and "head 0 out", at
the key word the output of head 0 of layer KEY_LAYER before o_proj (what that head brings, hidden state
KEY_LAYER + 1's row; its other rows repeat it). Two more split that output: "value even" is head 0's value
projection averaged evenly over the target's tokens (what the head would bring if its attention were even on
the target), "value on target" the same weighted by head 0's own attention restricted to the target and
renormalised (its attention's shape within the target, without the mass elsewhere). Rows that are one vector
(not one per layer) print once."""

import argparse
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from tokenpacker.loading import load
from tokenpacker.synthetic.scenes import COLORS, COLUMNS, ROWS, SPLITS, random_scene, sample_question
from tokenpacker.synthetic.train import (KEY_LAYER, TRAINING_ATTENTION, WARMUP_SPLIT, AttentionProbe, attention_target,
                                         key_word, patch_labels, token_masks)

sys.path.insert(0, str(Path(__file__).parent))
from oracle import add_oracle_position  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("ckpt")
parser.add_argument("n", type=int)
parser.add_argument("--oracle", type=float, default=0.0)
parser.add_argument("--split", default="warmup")
parser.add_argument("--retrieval", action="store_true", help="also the target's mean state and head 0's output at the key word")
args = parser.parse_args()

pipe = load(args.ckpt, device="cpu")
model, tokenizer = pipe.model.eval(), pipe.tokenizer
if args.oracle:
    add_oracle_position(model, args.oracle)
split = WARMUP_SPLIT if args.split == "warmup" else SPLITS[args.split]
rng = random.Random(31)
states = {"object": [], "key word": [], "answer": []}  # position -> [(layers + 1, H)]
if args.retrieval:
    states |= {"object mean": [], "head 0 out": [], "value even": [], "value on target": []}
    model.set_attn_implementation(TRAINING_ATTENTION)  # SDPA, plus head 0's attention at the key word on request
    attention = model.model.layers[KEY_LAYER].self_attn
    head_dim = attention.head_dim
    head_outputs = {}  # o_proj's input: (1, T, heads * head_dim), head 0 first; v_proj's output, head 0 first
    attention.o_proj.register_forward_pre_hook(lambda module, inputs: head_outputs.update(x=inputs[0][0]))
    attention.v_proj.register_forward_hook(lambda module, inputs, output: head_outputs.update(v=output[0, :, :head_dim]))
labels, unseen = [], 0
with torch.no_grad():
    while len(labels) < args.n:
        scene = random_scene(rng, **split)
        kind, question, answer, target = sample_question(scene, rng, "where")
        if kind != "where":  # a scene with no object of a unique colour and shape gets another question
            continue
        request = pipe.prepare(scene.render(), question)
        ids, layout = request.input_ids, request.layout
        visual = model.embed_visual_sequence(model.get_image_features(request.image.pixel_values).tokens, request.image.grid)
        embeds = model.build_inputs_embeds(torch.tensor(ids), visual)
        shift = layout.length - 1  # the placeholder became the visual embeddings
        key_piece = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(key_word(kind, question))[0])
        key = max(i for i, t in enumerate(ids) if t == key_piece) + shift
        extra = {}
        if args.retrieval:
            extra["attention_probe"] = attention_probe = AttentionProbe({KEY_LAYER: (torch.tensor([0]), torch.tensor([key]))})
        hidden = torch.stack(model(inputs_embeds=embeds, output_hidden_states=True, **extra).hidden_states)[:, 0]  # (L+1, T, H)
        x0, y0, x1, y1 = target.box
        centre = layout.tokens_at((x0 + x1) / 2, (y0 + y1) / 2)[-1]  # the global view's (or only view's) token
        states["object"].append(hidden[:, layout.positions[centre]])
        states["key word"].append(hidden[:, key])
        states["answer"].append(hidden[:, -1])
        if args.retrieval:
            views = request.image.views
            masks = token_masks(patch_labels(scene, views, model.config.raw_grid), views, model.config.point_grid)
            taught = layout.positions[attention_target(kind, question, answer, masks, layout)]
            unseen += len(taught) == 0  # too small for the global view's dense labels: its centre token instead
            target_positions = taught if len(taught) else [layout.positions[centre]]
            states["object mean"].append(hidden[:, target_positions].mean(1))
            states["head 0 out"].append(head_outputs["x"][None, key, :head_dim])
            values = head_outputs["v"][target_positions].float()  # (target tokens, head_dim)
            weights = attention_probe.log_probs[KEY_LAYER][0, target_positions].softmax(-1)  # renormalised on target
            states["value even"].append(values.mean(0, keepdim=True))
            states["value on target"].append((weights[:, None] * values).sum(0, keepdim=True))
        row, column = ("middle", "center") if answer == "center" else answer.split()
        labels.append((ROWS.index(row), COLUMNS.index(column), list(COLORS).index(target.color)))
labels = torch.tensor(labels)
cut = int(0.7 * args.n)


def probe(x: torch.Tensor, y: torch.Tensor) -> float:
    x = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-6)
    classes = int(y.max()) + 1
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x[:cut] @ weight + bias, y[:cut]) + 1e-2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return ((x[cut:] @ weight + bias).argmax(-1) == y[cut:]).float().mean().item()


print(f"{args.ckpt}, oracle {args.oracle}, {args.split} split, {args.n} scenes ({args.n - cut} scored); "
      f"majority row {labels[cut:, 0].bincount().max().item() / (args.n - cut):.2f}, column "
      f"{labels[cut:, 1].bincount().max().item() / (args.n - cut):.2f}, colour "
      f"{labels[cut:, 2].bincount().max().item() / (args.n - cut):.2f}"
      + (f"; {unseen} targets without taught tokens (object mean: their centre token)" if args.retrieval else ""))
for position, collected in states.items():
    stacked = torch.stack(collected).float()  # (N, L+1, H)
    for layer in range(stacked.shape[1]):
        where = f"hidden state {layer}" if stacked.shape[1] > 1 else f"layer {KEY_LAYER}, head 0"
        print(f"  {position:8s} {where}: row {probe(stacked[:, layer], labels[:, 0]):.2f}  "
              f"column {probe(stacked[:, layer], labels[:, 1]):.2f}  colour {probe(stacked[:, layer], labels[:, 2]):.2f}")
