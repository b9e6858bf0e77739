"""Exists questions split by the expected answer: does a model fail on 'yes' or on 'no'?

    PYTHONPATH=. python experiments/schedule/exists_by_answer.py MODEL [N]

N `Is there a {color} {shape}?` questions on standard-split scenes drawn from the evaluation's seed (not its
scenes: only exists questions are drawn here, so the draws differ), greedy answers as in `evaluate`, and per
expected answer: how many, accuracy, and what the model said.
"""

import random
import sys
from collections import Counter, defaultdict

import tokenpacker
from tokenpacker.generation import SamplingSettings
from tokenpacker.synthetic.evaluate import EVAL_SEED
from tokenpacker.synthetic.scenes import SPLITS, random_scene, sample_question

model, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 120
pipeline = tokenpacker.load(model, device="cpu")
rng = random.Random(EVAL_SEED)
said = defaultdict(Counter)
for _ in range(n):
    scene = random_scene(rng, **SPLITS["standard"])
    _, question, expected, _ = sample_question(scene, rng, "exists")
    said[expected][pipeline.ask(scene.render(), question, settings=SamplingSettings(max_new_tokens=6, num_alternatives=0)).text] += 1
for expected, answers in sorted(said.items()):
    total = sum(answers.values())
    print(f"expected {expected}: n={total}  accuracy {answers[expected] / total:.3f}  said {dict(answers.most_common())}")
