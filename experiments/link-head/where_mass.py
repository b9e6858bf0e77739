"""Where a `where` key word's attention goes in layer KEY_LAYER (the `where` head and head 0), teacher-forced on
fresh scenes of the warm-up split (small canvases) and the standard split, split by what each token shows.

    PYTHONPATH=. python experiments/link-head/where_mass.py MODEL [--batches 8]

Columns: the target (the object's tokens in the global view, what both heads are taught), the same object's tokens
in the tiles, tokens of objects of the same shape in another colour, of the same colour in another shape, of other
objects, the background and <s>.
"""

import argparse
import random

import numpy as np
import torch

import tokenpacker.synthetic.train as T
from tokenpacker.loading import load
from tokenpacker.synthetic.scenes import COLORS, SHAPES, SPLITS

COLUMNS = ("target", "same object, tiles", "same shape", "same colour", "other objects", "background", "<s>")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    pipeline = load(args.model, device="cpu")
    model = pipeline.model
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    make = T.ExampleMaker(pipeline.tokenizer, model.config, count_mark="first", branches=T.BRANCH_QUOTA)
    probes, groups = [], []  # the batch's AttentionProbe; per `where` question its token groups, in key-word order

    class RecordedProbe(T.AttentionProbe):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            probes.append(self)

    target_of = T.attention_target

    def recording_target(kind, question, answer, masks, layout, count_view="tiles"):
        if kind == "where":
            *_, colour, shape = question.rstrip("?").split()
            c = masks[f"color{1 + list(COLORS).index(colour)}"]
            s = masks[f"shape{1 + SHAPES.index(shape)}"]
            objects = np.any([masks[f"color{i}"] for i in range(1, len(COLORS) + 1)], axis=0)
            token = lambda mask: layout.positions[mask[layout.view_index, layout.gy, layout.gx]]
            groups.append([token(c & s), token(s & ~c), token(c & ~s), token(objects & ~c & ~s), token(~objects)])
        return target_of(kind, question, answer, masks, layout, count_view)

    T.AttentionProbe, T.attention_target = RecordedProbe, recording_target
    where_head = T.WhereHead(model.config.text_config.hidden_size // model.config.text_config.num_attention_heads,
                             head=T.WHERE_HEAD)  # only so that batch_loss probes the `where` head; its read-out unused
    rng = random.Random(11)
    for split_name, split in (("warm-up", T.WARMUP_SPLIT), ("standard", SPLITS["standard"])):
        shares = {(T.KEY_LAYER, T.WHERE_HEAD): [], T.KEY_LAYER: []}
        for _ in range(args.batches):
            probes.clear()
            groups.clear()
            examples = [make(rng, split) for _ in range(4)]
            with torch.no_grad():
                T.batch_loss(model, None, examples, where_head)
            targets, is_where = [], []
            for _, _, taught, _ in examples:
                where_keys = {key for key, _, _ in taught.places}
                targets += [objects for position, _, objects in taught.keys if position in where_keys]
                is_where += [position in where_keys for position, _, _ in taught.keys]
            assert len(targets) == len(groups)
            for name in shares:
                log_probs = probes[0].log_probs[name]
                if name == T.KEY_LAYER:  # head 0's rows are every key word's
                    log_probs = log_probs[torch.tensor(is_where)]
                for row, target, (same, same_shape, same_colour, others, background) in zip(log_probs, targets, groups):
                    p = row.exp()
                    mass = lambda positions: p[torch.as_tensor(positions, dtype=torch.long)].sum().item()
                    shares[name].append((mass(target), mass(np.setdiff1d(same, target)), mass(same_shape),
                                         mass(same_colour), mass(others), mass(background), p[0].item()))  # fmt: skip
        for name, rows in shares.items():
            head = f"layer {name[0]} head {name[1]}" if isinstance(name, tuple) else f"layer {name} head 0"
            print(f"{split_name:8s} {head}  n {len(rows)}  "
                  + "  ".join(f"{c} {v:.3f}" for c, v in zip(COLUMNS, np.mean(rows, axis=0))), flush=True)


if __name__ == "__main__":
    main()
