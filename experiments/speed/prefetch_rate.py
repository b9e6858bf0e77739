"""Stage-2 seconds per step with the scenes made in this process or by a DataLoader worker (`prefetch.patch`).

    cp tokenpacker/synthetic/train.py tokenpacker/synthetic/_old_train.py     # main's code: "old"
    git apply experiments/speed/prefetch.patch                                 # the worker: "new"
    PYTHONPATH=. python experiments/speed/prefetch_rate.py old|new THREADS small|full STEPS
    git checkout tokenpacker/synthetic/train.py; rm tokenpacker/synthetic/_old_train.py

`train_mllm` from the shipped checkpoint (tower frozen, no dense probe), 8 scenes a step, torch at THREADS threads."""

import random
import sys

import torch

which, threads, split_name, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
if which == "old":
    import tokenpacker.synthetic._old_train as T
else:
    import tokenpacker.synthetic.train as T
from tokenpacker.loading import load
from tokenpacker.synthetic.scenes import SPLITS

pipe = load("assets/default-model", device="cpu")
model = pipe.model.train()
model.requires_grad_(True)
model.model.vision_tower.requires_grad_(False)
model.set_attn_implementation(T.TRAINING_ATTENTION)
make = T.ExampleMaker(pipe.tokenizer, model.config, max_turns=8)
weights = dict(key=1.0, patch=0.0, attention=0.5)
split = SPLITS["standard"] if split_name == "full" else T.WARMUP_SPLIT
common = dict(weights=weights, log_every=1000, tag="s", save=lambda: None, save_every=10**6)
if which == "old":
    seconds, *_ = T.train_mllm(model, None, make, random.Random(7), steps, 1e-4, 8, lambda step: split, **common)
else:
    seconds, *_ = T.train_mllm(model, None, make, 7, steps, 1e-4, 8, lambda rng, step: split, **common)
print(which, threads, split_name, "s/step", round(seconds / steps, 3), flush=True)
