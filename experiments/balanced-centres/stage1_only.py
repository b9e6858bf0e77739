"""Stage 1 of the recipe alone, as `train()` runs it (the same seed, tokenizer, model and order of random draws),
saved as a checkpoint whose tower `centre_probe.py --features tower` reads (the rest of the model untrained).

    PYTHONPATH=. python experiments/balanced-centres/stage1_only.py /tmp/z/model --balanced-centres --position-start sincos
    PYTHONPATH=. python experiments/balanced-centres/stage1_only.py /tmp/f/model --count-mark first

Stage 1 is all of the recipe that shapes the tower; this checks a tower change in ~16 minutes instead of a full run.
"""

import argparse
import inspect
import random
from pathlib import Path

import torch

from tokenpacker.modeling import TokenPackerForCausalLM
from tokenpacker.pipeline import TokenPackerPipeline
from tokenpacker.synthetic import train as T
from tokenpacker.tokenizer import LlamaTokenizer

parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
parser.add_argument("--balanced-centres", action="store_true")
parser.add_argument("--position-start", choices=["sincos", "clip"], default="clip")
parser.add_argument("--count-mark", choices=list(T.COUNT_MARKS), default="centre")
args = parser.parse_args()
recipe = {name: p.default for name, p in inspect.signature(T.train).parameters.items()}  # train()'s defaults

torch.manual_seed(recipe["seed"])
rng = random.Random(recipe["seed"])
tokenizer = LlamaTokenizer.train(T.tokenizer_corpus(), args.out, vocab_size=500, hard_vocab_limit=False)
config = T.default_config(tokenizer)
model = TokenPackerForCausalLM(config).train()
head = T.PatchHead(config.vision_config.hidden_size * len(config.mm_vision_feature_layers),
                   balanced_centres=args.balanced_centres)  # fmt: skip
T.TokenHead(config.text_config.hidden_size, config.scale_factor)  # train() creates it here: the same random draws
make = T.ExampleMaker(tokenizer, config, count_mark=args.count_mark)
if args.position_start == "sincos":
    with torch.no_grad():
        model.model.vision_tower.vision_tower.embeddings.position_embedding.weight.copy_(
            T.sincos_position_embedding(config.raw_grid, config.vision_config.hidden_size))
T.pretrain_vision(model, head, make, rng, recipe["vision_steps"], recipe["shape_steps"], batch_size=6,  # train()'s 6
                  lr=recipe["vision_lr"], log_every=recipe["log_every"])  # fmt: skip
TokenPackerPipeline(model, tokenizer, source=str(args.out)).save_pretrained(args.out)
