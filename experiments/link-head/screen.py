"""Screen the colour link on run BB: continue BB's stage 2 on the task's full range for the same steps, with no link
(control) or with layer 0's head H taught to bring each `where` / `exists` key word its colour word (link:H), and
report teacher-forced accuracy per type over the last steps, the key words' attention mass and a greedy score.

    PYTHONPATH=. python experiments/link-head/screen.py STEPS control link:0 link:1 [...]
"""

import copy
import random
import sys
import time

import numpy as np
import torch

from tokenpacker.loading import load
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.evaluate import evaluate
from tokenpacker.synthetic.scenes import QUESTION_TYPES, SPLITS

SEED = T.TRAIN_SEED + 7  # not a seed of the recipe's stages


def run(shipped, variant: str, steps: int, tail: int = 75) -> None:
    link_head = None if variant == "control" else int(variant.split(":")[1])
    model = copy.deepcopy(shipped.model)
    model.requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    model.train()
    config = model.config
    make = T.ExampleMaker(shipped.tokenizer, config, count_mark="first", branches=T.BRANCH_QUOTA,
                          colour_link=link_head is not None)  # fmt: skip
    where_head = T.WhereHead(config.text_config.hidden_size // config.text_config.num_attention_heads, head=T.WHERE_HEAD)
    weights = dict(key=1.0, patch=0.0, attention=0.5, where=1.0, where_attention=1.0, count_layer=T.KEY_LAYER,
                   link_head=link_head or 0)  # fmt: skip
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    full_range = lambda step: SPLITS["small"] if rng.random() < 0.25 else SPLITS["standard"]
    seconds, history, scores = T.train_mllm(model, None, make, rng, steps, 5e-4, 8, full_range, weights, 25, variant,
                                            save=lambda: None, save_every=10**9, warmup=10, where_head=where_head)  # fmt: skip
    answers = [a for batch in scores[-tail:] for a in batch]
    forced = {k: np.mean([ok for kind, ok in answers if kind == k]) for k in QUESTION_TYPES}
    masses = np.nanmean(np.array(history[-tail:], dtype=float), axis=0)
    model.set_attn_implementation("sdpa")
    greedy = evaluate(type(shipped)(model.eval(), shipped.tokenizer), "standard", 300)
    print(f"RESULT {variant} {steps} steps {seconds:.0f}s  teacher-forced (last {tail} steps) "
          + " ".join(f"{k} {v:.3f}" for k, v in forced.items())
          + f"  mass: key word {masses[4]:.3f} where head {masses[8]:.3f}"
          + f"  greedy standard n=300 {greedy['accuracy']:.3f} "
          + " ".join(f"{k} {v:.2f}" for k, v in greedy["per_type"].items()), flush=True)


if __name__ == "__main__":
    shipped = load("assets/default-model", device="cpu")
    for variant in sys.argv[2:]:
        run(shipped, variant, int(sys.argv[1]))
