"""A small whole run (stages 1-3 at 10-40 steps) with main's code ("old", copied to _old_train.py as in
`prefetch_rate.py`) or with `prefetch.patch` applied ("new"); the checkpoint and log go to /tmp/eq/{old,new}.

    PYTHONPATH=. python experiments/speed/prefetch_end_to_end.py old|new"""

import sys
import time
from pathlib import Path

which = sys.argv[1]
if which == "old":
    from tokenpacker.synthetic._old_train import train
else:
    from tokenpacker.synthetic.train import train
config = dict(steps=40, vision_steps=30, shape_steps=10, projector_steps=30, projector_color_steps=10, warmup_steps=20,
              batch_size=8, max_turns=8, log_every=10, polish_steps=10, save_every=1000)  # fmt: skip
start = time.time()
train(Path(f"/tmp/eq/{which}"), **config)
print(which, "TOTAL", round(time.time() - start, 1))
