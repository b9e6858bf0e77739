"""Where a checkpoint's answers fail on the standard split: accuracy by number of HD tiles and by the size of the
object asked about (its side in pixels of the global view, 336 px for the longer side).

    PYTHONPATH=. python experiments/full-range/breakdown.py --model assets/default-model --n 300

The scenes and questions are exactly `evaluate-default --split standard`'s (same seed, same draws).
"""

import argparse
import random
from collections import defaultdict

from tokenpacker.generation import SamplingSettings
from tokenpacker.loading import load
from tokenpacker.partition import choose_partition
from tokenpacker.synthetic.evaluate import EVAL_SEED
from tokenpacker.synthetic.scenes import QUESTION_TYPES, SPLITS, random_scene, sample_question


def bucket_tiles(tiles: int) -> str:
    return "1 view" if tiles == 1 else ("2-4 tiles" if tiles <= 4 else "5-9 tiles")


def bucket_size(side: float) -> str:
    return next(name for limit, name in [(12, "< 12 px"), (24, "12-24 px"), (48, "24-48 px"), (1e9, ">= 48 px")] if side < limit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="assets/default-model")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    pipeline = load(args.model, device="cpu")
    rng = random.Random(EVAL_SEED)
    settings = SamplingSettings(max_new_tokens=6, num_alternatives=0)
    by_tiles, by_size = defaultdict(list), defaultdict(list)
    config = pipeline.model.config
    view = config.vision_config.image_size  # 336
    for i in range(args.n):
        scene = random_scene(rng, **SPLITS["standard"])
        asked_kind, question, expected, target = sample_question(scene, rng, QUESTION_TYPES[i % len(QUESTION_TYPES)])
        ok = pipeline.ask(scene.render(), question, settings=settings).text == expected
        tiles = choose_partition(scene.height, scene.width, config.patch_num, view).num_tiles
        by_tiles[(bucket_tiles(tiles), asked_kind)].append(ok)
        by_tiles[(bucket_tiles(tiles), "all")].append(ok)
        if target is not None:
            side = target.size * view / max(scene.width, scene.height)  # the thumbnail's (or only view's) scale
            by_size[(bucket_size(side), asked_kind)].append(ok)
            by_size[(bucket_size(side), "with a target")].append(ok)
    for title, table in [("by tiles", by_tiles), ("by target side in the global view", by_size)]:
        print(title)
        for (row, kind), oks in sorted(table.items()):
            print(f"  {row:>10}  {kind:<14} {sum(oks) / len(oks):.3f}  (n={len(oks)})")


if __name__ == "__main__":
    main()
