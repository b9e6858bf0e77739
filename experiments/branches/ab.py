"""Branches vs multi-turn conversations in stage 2, for the same wall-clock: one stage 1b (run AB's tower), then each
variant trains the projector and LLM on small canvases (the recipe's stage-2 warm-up split) and is scored greedily
on fresh held-out scenes of that split.

    PYTHONPATH=. python experiments/branches/ab.py WORKDIR turns:STEPS branches:STEPS [...]
"""

import random
import sys
import time
from pathlib import Path

import torch

from tokenpacker.generation import SamplingSettings
from tokenpacker.loading import load
from tokenpacker.modeling import TokenPackerForCausalLM
from tokenpacker.pipeline import TokenPackerPipeline
from tokenpacker.synthetic import train as T
from tokenpacker.synthetic.evaluate import EVAL_SEED
from tokenpacker.synthetic.scenes import QUESTION_TYPES, random_scene, sample_question

SEED = T.TRAIN_SEED


def stage_1b(work: Path):
    saved = work / "stage1b.pt"
    shipped = load("assets/default-model", device="cpu")
    tokenizer, config = shipped.tokenizer, shipped.model.config
    if not saved.exists():
        torch.manual_seed(SEED)
        model = TokenPackerForCausalLM(config).train()
        model.model.vision_tower.load_state_dict(shipped.model.model.vision_tower.state_dict())
        model.model.vision_tower.requires_grad_(False)
        head = T.TokenHead(config.text_config.hidden_size, config.scale_factor)
        make = T.ExampleMaker(tokenizer, config, count_mark="first")
        torch.manual_seed(SEED + 1)
        T.pretrain_projector(model, head, make, random.Random(SEED + 1), 1000, 200, batch_size=6, lr=1e-3, log_every=25)
        torch.save({"model": model.state_dict(), "head": head.state_dict()}, saved)
    return tokenizer, config, torch.load(saved)


def score(pipeline, n=300):
    rng, right = random.Random(EVAL_SEED), {}
    settings = SamplingSettings(max_new_tokens=6, num_alternatives=0)
    for i in range(n):
        scene = random_scene(rng, **T.WARMUP_SPLIT)
        kind, question, expected, _ = sample_question(scene, rng, QUESTION_TYPES[i % len(QUESTION_TYPES)])
        right.setdefault(kind, []).append(pipeline.ask(scene.render(), question, settings=settings).text == expected)
    total = sum(sum(v) for v in right.values()) / n
    return total, {k: round(sum(v) / len(v), 3) for k, v in sorted(right.items())}


def run(work: Path, variant: str, steps: int):
    tokenizer, config, state = stage_1b(work)
    torch.manual_seed(SEED + 2)
    model = TokenPackerForCausalLM(config)
    model.load_state_dict(state["model"])
    model.model.vision_tower.requires_grad_(False)
    head = T.TokenHead(config.text_config.hidden_size, config.scale_factor)
    head.load_state_dict(state["head"])
    where = T.WhereHead(config.text_config.hidden_size)
    make = T.ExampleMaker(tokenizer, config, max_turns=8, count_mark="first",
                          branches=T.BRANCH_QUOTA if variant == "branches" else None)
    model.set_attn_implementation(T.TRAINING_ATTENTION)
    model.train()
    weights = dict(key=1.0, patch=0.3, attention=0.5, where=1.0, where_attention=1.0, count_layer=T.KEY_LAYER)
    seconds, _, _ = T.train_mllm(model, head, make, random.Random(SEED + 2), steps, 8e-4, 8, lambda step: T.WARMUP_SPLIT,
                                 weights, 25, variant, save=lambda: None, save_every=10**9, where_head=where)
    model.set_attn_implementation("sdpa")
    total, per_type = score(TokenPackerPipeline(model.eval(), tokenizer))
    print(f"RESULT {variant} steps {steps} train {seconds:.0f}s accuracy {total:.3f} {per_type}", flush=True)


if __name__ == "__main__":
    work = Path(sys.argv[1])
    work.mkdir(parents=True, exist_ok=True)
    for arg in sys.argv[2:]:
        variant, steps = arg.split(":")
        run(work, variant, int(steps))
