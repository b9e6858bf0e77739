"""GPU benchmark (run `bash benchmarks/gpu.sh` on a machine with an NVIDIA GPU).

7B-shaped random weights (LLaMA-7B geometry, 32 layers) with the LLM's linear layers in bitsandbytes NF4 and
CLIP-L/336 + projector in fp16: peak VRAM, time to first token and decode tokens/s for
- TokenPacker, pad mode (144 visual tokens), our pipeline;
- TokenPacker-HD 3x3 (1450 visual tokens), our pipeline;
- LLaVA-1.5's MLP projector (576 tokens) on the same CLIP and LLM, our pipeline;
- transformers' own LlavaForConditionalGeneration at the same shapes (576 tokens);
all in the same run. Writes benchmarks/results/gpu.json.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import DynamicCache, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from tokenpacker.layout import visual_sequence

from .common import TEXT_TOKENS, clip_l_config, llm_7b_config, seven_b_shaped


def quantize_llm_linears(module: torch.nn.Module, skip: tuple[str, ...]) -> torch.nn.Module:
    """Replace nn.Linear layers (except under `skip`) by bitsandbytes NF4 layers; moving to CUDA quantises them."""
    import bitsandbytes as bnb

    for name, child in list(module.named_modules()):
        for attr, linear in list(child.named_children()):
            full = f"{name}.{attr}" if name else attr
            if isinstance(linear, torch.nn.Linear) and not any(full.startswith(s) for s in skip):
                q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                      compute_dtype=torch.float16, quant_type="nf4")  # fmt: skip
                q.weight = bnb.nn.Params4bit(linear.weight.data.to(torch.float16), requires_grad=False, quant_type="nf4")
                if linear.bias is not None:
                    q.bias = torch.nn.Parameter(linear.bias.data.to(torch.float16), requires_grad=False)
                setattr(child, attr, q)
    return module


def _cuda_time(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.inference_mode()
def _ours(label: str, grid: tuple[int, int] | None, projector: str, steps: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = seven_b_shaped(layers=32, aspect="slice" if grid else "pad", dtype=torch.float16)
    model = quantize_llm_linears(model, skip=("model.vision_tower", "model.mm_projector", "lm_head")).cuda()
    mlp = LlavaMultiModalProjector(LlavaConfig(vision_config=clip_l_config(), text_config=llm_7b_config(32))).half().cuda()
    views = 1 if grid is None else grid[0] * grid[1] + 1
    pixels = torch.randn(views, 3, 336, 336, device="cuda", dtype=torch.float16)
    ids = torch.randint(3, 32000, (TEXT_TOKENS,), device="cuda")

    def first_token():
        features, multi = model.model.vision_tower(pixels)
        if projector == "mlp":
            tokens = mlp(features)
            visual = tokens.reshape(-1, tokens.shape[-1]) if grid is None else model.embed_visual_sequence(tokens, grid)
        else:
            tokens = model.model.mm_projector(features, multi).tokens
            visual = model.embed_visual_sequence(tokens, grid)
        embeds = torch.cat([model.model.embed_tokens(ids[: TEXT_TOKENS // 2]), visual, model.model.embed_tokens(ids[TEXT_TOKENS // 2 :])])[None]
        cache = DynamicCache(config=model.config.text_config)
        out = model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache, out.logits.argmax(-1), embeds.shape[1]

    return {"label": label, **_time_generation(model, first_token, steps)}


def _time_generation(model, first_token, steps: int) -> dict:
    """Best-of-3 time to first token (`first_token() -> cache, token, length`), then `steps` greedy decode steps."""
    first_token()  # warm up
    state = {}
    ttft = min(_cuda_time(lambda: state.update(zip(("cache", "token", "length"), first_token()))) for _ in range(3))
    cache, token = state["cache"], state["token"]

    def decode():
        nonlocal token
        for _ in range(steps):
            token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)

    seconds = _cuda_time(decode)
    return {"sequence_length": state["length"], "ttft_s": ttft, "decode_tokens_per_s": steps / seconds,
            "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30}


@torch.inference_mode()
def _transformers_llava(steps: int) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=clip_l_config(), text_config=llm_7b_config(32), image_token_index=32000,
                         image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default")  # fmt: skip
    config.text_config.vocab_size = 32064
    model = LlavaForConditionalGeneration(config).half()
    model = quantize_llm_linears(model, skip=("model.vision_tower", "model.multi_modal_projector", "lm_head")).cuda().eval()
    ids = torch.randint(3, 32000, (1, TEXT_TOKENS + 576), device="cuda")
    ids[0, TEXT_TOKENS // 2 : TEXT_TOKENS // 2 + 576] = config.image_token_index
    pixels = torch.randn(1, 3, 336, 336, device="cuda", dtype=torch.float16)

    def first_token():
        cache = DynamicCache(config=config.text_config)
        out = model(input_ids=ids, pixel_values=pixels, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache, out.logits.argmax(-1), ids.shape[1]

    return {"label": "transformers LlavaForConditionalGeneration (576)", **_time_generation(model, first_token, steps)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU; this benchmark needs one")
    assert len(visual_sequence((3, 3))) == 9 + 6 + 3 + 2
    rows = [
        _ours("TokenPacker pad (144)", None, "tokenpacker", args.steps),
        _ours("TokenPacker-HD 3x3 (1450)", (3, 3), "tokenpacker", args.steps),
        _ours("MLP projector (576), same CLIP and LLM", None, "mlp", args.steps),
        _transformers_llava(args.steps),
    ]
    for row in rows:
        print(f"{row['label']:52s} seq {row['sequence_length']:5d}  TTFT {row['ttft_s'] * 1000:7.1f} ms  "
              f"decode {row['decode_tokens_per_s']:6.1f} tok/s  VRAM {row['peak_vram_gib']:.2f} GiB")  # fmt: skip
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows,
              "ttft_ratio_tp144_vs_mlp576": rows[0]["ttft_s"] / rows[2]["ttft_s"]}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
