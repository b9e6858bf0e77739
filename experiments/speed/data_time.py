"""Seconds to make one batch of training data in this process, per split (the shipped checkpoint's tokenizer).

    PYTHONPATH=. python experiments/speed/data_time.py"""

import random
import time

from tokenpacker.loading import load
from tokenpacker.synthetic.scenes import SPLITS
from tokenpacker.synthetic.train import WARMUP_SPLIT, ExampleMaker

pipe = load("assets/default-model", device="cpu")
make = ExampleMaker(pipe.tokenizer, pipe.model.config, max_turns=8)
rng = random.Random(5)
for name, split in [("small canvases", WARMUP_SPLIT), ("standard", SPLITS["standard"]), ("small split", SPLITS["small"])]:
    start = time.time()
    for _ in range(5):
        [make(rng, split) for _ in range(8)]
    conversations = (time.time() - start) / 5
    start = time.time()
    for _ in range(5):
        [make.views_and_labels(rng, split) for _ in range(6)]
    views = (time.time() - start) / 5
    print(f"{name}: 8 stage-2 conversations {conversations:.3f} s, 6 stage-1 views and labels {views:.3f} s")
