"""Accuracy (and grounding) of a model on freshly generated held-out scenes.

    python -m tokenpacker evaluate-default [--split standard|small] [--n N] [--max-tiles K] [--grounding]

Scenes come from a seed never used in training; question types are cycled, and a type that cannot be asked
about a scene falls back to another one (`sample_question`), so the per-type counts differ a little; the report
lists each. `evaluation_questions` draws them; `answered_questions` yields every question with its scene and
answer, for breakdowns; `evaluate` sums them up. An answer is correct when the generated text equals the expected answer exactly.
Grounding (for "What color is the {shape}?"): the composed attention map (answer attention of the whole
answer, averaged over all layers, head mean, pushed through the region-to-point weights and splatted on
the original image) has a share inside the target object's box at least 3x the box's share of the image.
"""

import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..generation import SamplingSettings
from .scenes import QUESTION_TYPES, SPLITS, Scene, SceneObject, random_scene, sample_question

EVAL_SEED = 20_260_917  # held out: training draws from random.Random(TRAIN_SEED) only


def grounding_ratio(trace, box) -> float:
    """(share of the composed map inside `box`) / (share of the image area that `box` covers)."""
    width, height = trace.layout.image_size
    heat = trace.image_map(trace.patch_attention(trace.answer_attention()))
    total = heat.sum()
    if total <= 0:
        return 0.0
    x0, y0, x1, y1 = (int(np.floor(max(0, box[0]))), int(np.floor(max(0, box[1]))),
                      int(np.ceil(min(width, box[2]))), int(np.ceil(min(height, box[3]))))  # fmt: skip
    inside = heat[y0:y1, x0:x1].sum() / total
    area = (x1 - x0) * (y1 - y0) / (width * height)
    return float(inside / area)


@dataclass
class AnsweredQuestion:
    scene: Scene
    kind: str  # the question type asked (after any fallback)
    question: str
    expected: str
    answer: str  # the generated text
    target: SceneObject | None  # the object asked about, if the question names one
    grounding_ratio: float | None = None  # only for grounding runs, on "color" questions

    @property
    def correct(self) -> bool:
        return self.answer == self.expected


def evaluation_questions(split: str = "standard", n: int = 200, seed: int = EVAL_SEED, grounding: bool = False):
    """The evaluation's n (scene, type asked, question, expected answer, target object), in order, without a model."""
    rng = random.Random(seed)
    for i in range(n):
        scene = random_scene(rng, **SPLITS[split])
        kind = "color" if grounding else QUESTION_TYPES[i % len(QUESTION_TYPES)]
        yield scene, *sample_question(scene, rng, kind)


def answered_questions(pipeline, split: str = "standard", n: int = 200, max_tiles: int | None = None,
                       seed: int = EVAL_SEED, grounding: bool = False):  # fmt: skip
    """The evaluation's n questions, one AnsweredQuestion each, in order (greedy answers, at most 6 tokens)."""
    settings = SamplingSettings(max_new_tokens=6, num_alternatives=0)
    for scene, asked_kind, question, expected, target in evaluation_questions(split, n, seed, grounding):
        answer = pipeline.ask(scene.render(), question, settings=settings, max_tiles=max_tiles, capture=grounding)
        ratio = grounding_ratio(answer.trace, target.box) if grounding and asked_kind == "color" else None
        yield AnsweredQuestion(scene, asked_kind, question, expected, answer.text, target, ratio)


def evaluate(pipeline, split: str = "standard", n: int = 200, max_tiles: int | None = None, seed: int = EVAL_SEED,
             grounding: bool = False, progress=None) -> dict:  # fmt: skip
    per_type = defaultdict(list)
    ratios = []
    for i, record in enumerate(answered_questions(pipeline, split, n, max_tiles, seed, grounding)):
        per_type[record.kind].append(record.correct)
        if record.grounding_ratio is not None:
            ratios.append(record.grounding_ratio)
        if progress:
            progress(i + 1, n)
    results = [ok for oks in per_type.values() for ok in oks]
    report = {
        "split": split, "n": n, "max_tiles": max_tiles, "seed": seed,
        "accuracy": sum(results) / len(results),
        "per_type": {k: sum(v) / len(v) for k, v in sorted(per_type.items())},
        "per_type_n": {k: len(v) for k, v in sorted(per_type.items())},
    }  # fmt: skip
    if grounding:
        report["grounding_ratio_median"] = float(np.median(ratios)) if ratios else 0.0
        report["grounding_at_least_3x"] = float(np.mean([r >= 3 for r in ratios])) if ratios else 0.0
        report["grounding_n"] = len(ratios)
    return report


def recorded_accuracy(model_dir: str | Path) -> dict | None:
    """The standard-split accuracy a checkpoint's `evaluation.txt` records (the section of `run_evaluation`'s output
    with the largest `--n` on the evaluation seed, without `--max-tiles` or `--grounding`): {"n", "accuracy",
    "per_type": {kind: accuracy}}; None where the directory has no such record (a hub id, a released checkpoint, a
    file without the section)."""
    path = Path(model_dir) / "evaluation.txt"
    if not path.is_file():
        return None
    best = None
    for section in path.read_text(encoding="utf-8").split("\n== "):
        command = re.search(r"^\$ python -m tokenpacker evaluate-default (.*)$", section, re.MULTILINE)
        accuracy = re.search(r"^accuracy: ([0-9.]+)$", section, re.MULTILINE)
        if not command or not accuracy or re.search(r"--(max-tiles|grounding|seed)|--split (?!standard)", command[1]):
            continue
        n = re.search(r"--n (\d+)", command[1])
        n = int(n[1]) if n else 200  # `--n`'s default
        per_type = re.findall(r"^  (\w+): ([0-9.]+) \(n=\d+\)$", section, re.MULTILINE)  # [(kind, accuracy)]
        per_type = {kind: float(value) for kind, value in per_type}
        if best is None or n > best["n"]:
            best = {"n": n, "accuracy": float(accuracy[1]), "per_type": per_type}
    return best


def run_evaluation(args) -> int:
    from ..loading import load

    pipeline = load(args.model, device=args.device, dtype=args.dtype, quantization=args.quantization,
                    vision_tower=args.vision_tower, device_map=args.device_map)  # fmt: skip
    seed = args.seed if args.seed is not None else EVAL_SEED

    def progress(done, total):
        if done % 20 == 0 or done == total:
            print(f"  {done}/{total}", file=sys.stderr, flush=True)

    report = evaluate(pipeline, args.split, args.n, args.max_tiles, seed, grounding=args.grounding, progress=progress)
    print(f"accuracy: {report['accuracy']:.4f}")
    for kind, value in report["per_type"].items():
        print(f"  {kind}: {value:.4f} (n={report['per_type_n'][kind]})")
    if args.grounding:
        print(f"grounding: {report['grounding_at_least_3x']:.4f} of {report['grounding_n']} questions at >= 3x "
              f"(median ratio {report['grounding_ratio_median']:.2f})")  # fmt: skip
    return 0
