"""The decode loop: prefill the spliced embeddings, then one token at a time with a KV cache.

Greedy by default (argmax of the raw logits, as `generate(do_sample=False)`), temperature / top-p
sampling on request with a seeded generator. Every token carries its log-probability under the model's
own distribution (log-softmax of the float32 logits, before temperature) and its top alternatives.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .capture import AttentionRecorder
from .errors import GenerationSettingsError


@dataclass
class SamplingSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = 0
    num_alternatives: int = 5  # top alternatives kept per token

    def validate(self) -> "SamplingSettings":
        checks = [
            (isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= 8192, "max new tokens must be a whole number from 1 to 8192"),
            (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and 0 <= self.temperature <= 5, "temperature must be between 0 and 5"),
            (isinstance(self.top_p, (int, float)) and math.isfinite(self.top_p) and 0 < self.top_p <= 1, "top-p must be greater than 0 and at most 1"),
            (isinstance(self.num_alternatives, int) and 0 <= self.num_alternatives <= 20, "alternatives must be from 0 to 20"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise GenerationSettingsError(f"{message} (got {self!r})")
        return self


@dataclass
class GeneratedToken:
    token_id: int
    logprob: float  # log p(token) under the untempered distribution
    alternatives: list[tuple[int, float]]  # (token id, log p) of the most likely tokens, best first
    seconds: float  # wall time of the forward pass that produced it (the prefill for the first token)


def _choose(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> int:
    if settings.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs >= settings.top_p  # keep the smallest set reaching top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.inference_mode()
def decode(
    model,
    inputs_embeds: torch.Tensor,
    settings: SamplingSettings,
    eos_token_id: int,
    recorder: AttentionRecorder | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[GeneratedToken]:
    """Yield generated tokens until EOS (yielded too), `max_new_tokens`, or `should_stop()`."""
    settings.validate()
    generator = None
    if settings.temperature > 0:
        generator = torch.Generator().manual_seed(settings.seed if settings.seed is not None else time.time_ns())
    device = inputs_embeds.device
    cache = DynamicCache(config=model.config.text_config)
    extra = {"attention_recorder": recorder} if recorder is not None else {}
    model_inputs = {"inputs_embeds": inputs_embeds}
    for step in range(settings.max_new_tokens):
        if should_stop is not None and should_stop():
            return
        if recorder is not None:
            recorder.step = step
        start = time.perf_counter()
        out = model(**model_inputs, past_key_values=cache, use_cache=True, logits_to_keep=1, **extra)
        logits = out.logits[0, -1].float()
        token = _choose(logits, settings, generator)
        logprobs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logprobs, settings.num_alternatives) if settings.num_alternatives else None
        alternatives = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
        logprob = float(logprobs[token])
        yield GeneratedToken(token, logprob, alternatives, time.perf_counter() - start)
        if token == eos_token_id:
            return
        model_inputs = {"input_ids": torch.tensor([[token]], device=device)}
