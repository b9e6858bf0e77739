"""Shared pieces of the benchmarks: timing, and the 7B-shaped model with the same CLIP and LLM for every projector."""

import statistics
import time
from collections.abc import Callable

import torch
from transformers import LlavaConfig
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from tokenpacker import TokenPackerConfig, TokenPackerForCausalLM, TokenPackerProjector
from tokenpacker.capture import ATTENTION_IMPLEMENTATION
from tokenpacker.partition import num_visual_tokens

TEXT_TOKENS = 60  # a vicuna_v1 prompt with a short question, as the LLaMA tokenizer counts it


def timeit(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds (after `warmup` untimed calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def clip_l_config() -> dict:
    return dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=336, patch_size=14, projection_dim=768)  # fmt: skip


def llm_7b_config(layers: int = 2) -> dict:
    return dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                vocab_size=32000, max_position_embeddings=8192, rms_norm_eps=1e-5)  # fmt: skip


def seven_b_shaped(layers: int = 2, aspect: str = "pad", dtype=torch.float32) -> TokenPackerForCausalLM:
    """CLIP-L/336 + TokenPacker (s = 2) + a LLaMA-7B-shaped LLM with `layers` layers, random weights."""
    torch.manual_seed(0)
    config = TokenPackerConfig(text_config=llm_7b_config(layers), vision_config=clip_l_config(), scale_factor=2,
                               image_aspect_ratio=aspect)  # fmt: skip
    config.text_config._attn_implementation = ATTENTION_IMPLEMENTATION  # as `tokenpacker.load` sets it: SDPA + capture
    return TokenPackerForCausalLM(config).to(dtype).eval()


def projectors(model: TokenPackerForCausalLM) -> dict[str, torch.nn.Module]:
    """TokenPacker at s = 2, 3, 4 and LLaVA-1.5's MLP projector, at the model's widths (random weights)."""
    config = model.config
    torch.manual_seed(1)
    out = {f"tokenpacker_s{s}": TokenPackerProjector(1024, 4, config.text_config.hidden_size, config.raw_grid, s, 8).eval()
           for s in (2, 3, 4)}  # fmt: skip
    llava = LlavaConfig(vision_config=config.vision_config.to_dict(), text_config=config.text_config.to_dict())
    out["mlp_576"] = LlavaMultiModalProjector(llava).eval()
    return out


def visual_length(name: str, views: int, grid: tuple[int, int] | None) -> int:
    """Visual embeddings a projector feeds the LLM for `views` views laid out as `grid` (None: pad mode)."""
    per_view = 576 if name == "mlp_576" else (24 // int(name[-1])) ** 2
    if grid is None:
        return per_view
    return num_visual_tokens(grid[0], grid[1], per_view)


class LayerClock:
    """Wall time spent inside each decoder layer during one forward (forward hooks, removed on exit)."""

    def __init__(self, layers):
        self.layers, self.times, self._handles, self._start = layers, [], [], {}

    def __enter__(self):
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(lambda m, a, i=i: self._start.__setitem__(i, time.perf_counter())))
            self._handles.append(layer.register_forward_hook(lambda m, a, o, i=i: self.times.append(time.perf_counter() - self._start[i])))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()

    @property
    def per_layer(self) -> float:
        return sum(self.times) / max(1, len(self.times))
