"""Time to first token: TokenPacker (144/64/36 tokens per view) against LLaVA-1.5's MLP projector (576), with the
same CLIP-L/336 and the same 7B-shaped LLM, in pad mode and HD 3x3; per component, extrapolated to 32 layers.

On CPU the LLM has 2 layers (hidden 4096, 32 heads); per-layer prefill and decode times are measured with
hooks, and a 32-layer figure is `measured + 30 x per-layer`.
"""

import torch
from transformers import DynamicCache

from .common import TEXT_TOKENS, LayerClock, projectors, seven_b_shaped, timeit, visual_length

FULL_LAYERS = 32


@torch.inference_mode()
def _llm_times(model, length: int, decode_steps: int, repeats: int) -> dict:
    hidden = model.config.text_config.hidden_size
    embeds = torch.randn(1, length, hidden) * 0.02
    layers = model.model.layers

    def prefill():
        cache = DynamicCache(config=model.config.text_config)
        model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache

    prefill_s = timeit(prefill, repeats=repeats)
    with LayerClock(layers) as clock:
        prefill()
    prefill_layer = clock.per_layer
    cache = prefill()
    token = torch.tensor([[1]])
    with LayerClock(layers) as clock:
        decode_s = timeit(lambda: model(input_ids=token, past_key_values=cache, use_cache=True), repeats=decode_steps, warmup=1)
    return {"prefill_s": prefill_s, "prefill_per_layer_s": prefill_layer, "decode_s": decode_s,
            "decode_per_layer_s": clock.per_layer}  # fmt: skip


@torch.inference_mode()
def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    model = seven_b_shaped(layers=2)
    heads = projectors(model)
    repeats = 1 if quick else 3
    modes = {"pad": (1, None)} if quick else {"pad": (1, None), "hd_3x3": (10, (3, 3))}
    results = {}
    for mode, (views, grid) in modes.items():
        pixels = torch.randn(views, 3, 336, 336)
        vision_s = timeit(lambda: model.model.vision_tower(pixels), repeats=repeats)
        features, multi = model.model.vision_tower(pixels)
        for name, head in heads.items():
            if name == "mlp_576":
                project = lambda: head(features)  # noqa: E731  LLaVA-1.5 projects the penultimate-layer patches
            else:
                project = lambda head=head: head(features, multi)  # noqa: E731
            projector_s = timeit(project, repeats=repeats)
            length = TEXT_TOKENS + visual_length(name, views, grid)
            llm = _llm_times(model, length, decode_steps=4 if quick else 8, repeats=repeats)
            extra = FULL_LAYERS - model.config.text_config.num_hidden_layers
            results[f"{mode}/{name}"] = {
                "mode": mode, "projector": name, "sequence_length": length, "vision_s": vision_s,
                "projector_s": projector_s, **llm,
                "ttft_s": vision_s + projector_s + llm["prefill_s"],
                "ttft_32_layers_s": vision_s + projector_s + llm["prefill_s"] + extra * llm["prefill_per_layer_s"],
                "decode_32_layers_s": llm["decode_s"] + extra * llm["decode_per_layer_s"],
            }  # fmt: skip
            print(f"  {mode:7s} {name:15s} seq {length:5d}  TTFT {results[f'{mode}/{name}']['ttft_s']:.2f}s "
                  f"(32 layers {results[f'{mode}/{name}']['ttft_32_layers_s']:.2f}s)", flush=True)  # fmt: skip
    # The goal is about the 7B model, so the headline ratio is the 32-layer one (measured vision and projector,
    # measured 2-layer prefill plus 30 x the measured per-layer prefill); the 2-layer ratio is kept alongside.
    summary = {"ttft_ratio_tp144_vs_mlp576": results["pad/tokenpacker_s2"]["ttft_32_layers_s"]
               / results["pad/mlp_576"]["ttft_32_layers_s"],
               "ttft_2_layers_ratio_tp144_vs_mlp576": results["pad/tokenpacker_s2"]["ttft_s"] / results["pad/mlp_576"]["ttft_s"]}  # fmt: skip
    if "hd_3x3/mlp_576" in results:
        summary["hd_ttft_32_layers_ratio_tp144_vs_mlp576"] = (results["hd_3x3/tokenpacker_s2"]["ttft_32_layers_s"]
                                                            / results["hd_3x3/mlp_576"]["ttft_32_layers_s"])  # fmt: skip
    return {"summary": summary, "rows": results}
