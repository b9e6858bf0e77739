"""NF4 (bitsandbytes, CPU) against float32 for the same small model: memory footprint and speed."""

import random
import tempfile
from pathlib import Path

import torch

import tokenpacker
from tokenpacker import LlamaTokenizer, SamplingSettings, TokenPackerConfig, TokenPackerForCausalLM, TokenPackerPipeline
from tokenpacker.synthetic.scenes import random_scene
from tokenpacker.synthetic.train import tokenizer_corpus

from .common import timeit


def _small_checkpoint(directory: Path) -> Path:
    """A small TokenPacker (LLM hidden 1024, 4 layers; small CLIP) in the project's format, random weights."""
    tokenizer = LlamaTokenizer.train(tokenizer_corpus(), directory / "tokenizer", vocab_size=500, hard_vocab_limit=False)
    config = TokenPackerConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                         num_attention_heads=8, max_position_embeddings=2048),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                           image_size=336, patch_size=14),
        mm_vision_feature_layers=[1, 2, 3, 4], mm_projector_num_heads=4,
        view_separator_token_id=tokenizer.convert_tokens_to_ids(","), row_separator_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    TokenPackerPipeline(TokenPackerForCausalLM(config), tokenizer).save_pretrained(directory / "model")
    return directory / "model"


def run(quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _small_checkpoint(Path(tmp))
        image = random_scene(random.Random(0)).render()
        settings = SamplingSettings(max_new_tokens=16)
        rows = {}
        for name, quantization in (("float32", None), ("nf4", "4bit")):
            pipe = tokenpacker.load(checkpoint, device="cpu", quantization=quantization)
            llm_bytes = sum(p.numel() * p.element_size() for n, p in pipe.model.named_parameters() if n.startswith("model.layers."))
            answer = pipe.ask(image, "What is in the image?", settings=settings)
            seconds = timeit(lambda: pipe.ask(image, "What is in the image?", settings=settings), repeats=1 if quick else 3)
            rows[name] = {"memory_footprint_bytes": pipe.model.get_memory_footprint(), "llm_layers_bytes": llm_bytes,
                          "prefill_s": answer.timings["prefill_s"], "answer_s": seconds,
                          "decode_tokens_per_s": answer.timings.get("decode_tokens_per_s")}  # fmt: skip
    return {"summary": {"nf4_memory_ratio": rows["nf4"]["memory_footprint_bytes"] / rows["float32"]["memory_footprint_bytes"],
                        "nf4_llm_layers_memory_ratio": rows["nf4"]["llm_layers_bytes"] / rows["float32"]["llm_layers_bytes"],
                        "nf4_speed_ratio": rows["float32"]["answer_s"] / rows["nf4"]["answer_s"]},
            "rows": rows}  # fmt: skip
