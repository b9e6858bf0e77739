"""What seeing inside costs: decode speed with answer-attention capture / without, and the captured bytes /
what `output_attentions` holds for the same HD 3x3 prompt (7B-shaped LLM with 2 layers; both sides scale
linearly with the layer count, so the ratio holds at 32 layers)."""

import statistics
import time

import torch
from transformers import DynamicCache

from tokenpacker import AttentionRecorder
from tokenpacker.capture import ATTENTION_IMPLEMENTATION
from tokenpacker.layout import visual_sequence
from tokenpacker.partition import num_visual_tokens

from .common import TEXT_TOKENS, seven_b_shaped


@torch.inference_mode()
def _decode_rate(model, embeds, steps: int, recorder_factory) -> float:
    """Tokens per second of `steps` decode steps after a prefill (the prefill is not timed)."""
    recorder = recorder_factory()
    extra = {"attention_recorder": recorder} if recorder is not None else {}
    cache = DynamicCache(config=model.config.text_config)
    if recorder is not None:
        recorder.step = 0
    model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1, **extra)
    token = torch.tensor([[1]])
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if recorder is not None:
            recorder.step = step
        model(input_ids=token, past_key_values=cache, use_cache=True, **extra)
    return steps / (time.perf_counter() - start)


@torch.inference_mode()
def run(quick: bool = False) -> dict:
    model = seven_b_shaped(layers=2, aspect="slice")
    text = model.config.text_config
    visual = num_visual_tokens(3, 3, 144)  # 1450
    length = TEXT_TOKENS + visual
    visual_positions, separators, position = [], [], TEXT_TOKENS // 2  # the image sits inside the prompt
    for kind, _ in visual_sequence((3, 3)):
        if kind == "view":
            visual_positions += range(position, position + 144)
            position += 144
        else:
            separators.append(position)
            position += 1
    steps = 16 if quick else 48
    torch.manual_seed(0)
    embeds = torch.randn(1, length, text.hidden_size) * 0.02

    plain_rates, capture_rates = [], []
    rounds = 2 if quick else 4
    recorders = []

    def make_recorder():
        recorders.append(AttentionRecorder(text.num_hidden_layers, visual_positions, separators, steps + 1))
        return recorders[-1]

    _decode_rate(model, embeds, 2, lambda: None)  # warm up
    for _ in range(rounds):  # alternate, so drift on a shared machine hits both sides
        plain_rates.append(_decode_rate(model, embeds, steps, lambda: None))
        capture_rates.append(_decode_rate(model, embeds, steps, make_recorder))
    captured = recorders[-1].nbytes

    # What output_attentions returns for the same prompt and answer: measured for the prefill (eager),
    # the decode rows (one query row per step) counted from their shape.
    model.set_attn_implementation("eager")
    out = model(inputs_embeds=embeds, output_attentions=True, logits_to_keep=1)
    prefill_bytes = sum(a.numel() * a.element_size() for a in out.attentions)
    element = out.attentions[0].element_size()
    decode_bytes = sum(text.num_hidden_layers * text.num_attention_heads * (length + t) * element for t in range(1, steps + 1))
    model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    full = prefill_bytes + decode_bytes
    return {
        "summary": {
            "capture_decode_ratio": statistics.median(capture_rates) / statistics.median(plain_rates),
            "capture_memory_ratio": captured / full,
        },
        "rows": {
            "prompt_length": length, "visual_tokens": visual, "answer_tokens": steps + 1,
            "decode_tokens_per_s_plain": plain_rates, "decode_tokens_per_s_capture": capture_rates,
            "captured_bytes": captured, "output_attentions_bytes": full,
            "output_attentions_prefill_bytes_measured": prefill_bytes,
        },
    }  # fmt: skip
