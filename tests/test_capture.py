import numpy as np
import pytest
import torch

import tokenpacker
from tokenpacker import SamplingSettings
from tests.conftest import scene


def eager_attentions(pipe, request, answer_ids):
    """Full attention matrices from the eager implementation over prompt + answer (what we avoid)."""
    eager = tokenpacker.load(pipe.source, device="cpu")
    eager.model.set_attn_implementation("eager")
    with torch.no_grad():
        features = eager.model.get_image_features(request.image.pixel_values)
        grid = request.image.grid if request.image.mode == "slice" else None
        prompt = eager.model.build_inputs_embeds(torch.tensor(request.input_ids), eager.model.embed_visual_sequence(features.tokens, grid))
        answer = eager.model.get_input_embeddings()(torch.tensor([answer_ids]))
        out = eager.model(inputs_embeds=torch.cat([prompt, answer], 1), output_attentions=True)
    return torch.stack(out.attentions)[:, 0], prompt.shape[1]  # (layers, heads, T, T)


@pytest.mark.parametrize("fixture", ["pad_model", "hd_model"])
def test_captured_rows_equal_eager_attention(request, fixture):
    pipe = request.getfixturevalue(fixture)
    image = scene(1024, 768, seed=4)
    answer = pipe.ask(image, "What is in the image?", settings=SamplingSettings(max_new_tokens=6), capture=True)
    trace = answer.trace
    attentions, prompt_length = eager_attentions(pipe, pipe.prepare(image, "What is in the image?"), answer.token_ids)
    # Row t: the query that predicts answer token t (the prompt's last position for t = 0).
    rows = attentions[:, :, prompt_length - 1 : prompt_length - 1 + len(answer.token_ids)]  # (L, heads, T, S)
    visual = rows[..., trace.layout.positions]  # (L, heads, T, N)
    assert trace.attention_mean.shape == (2, len(answer.token_ids), trace.layout.num_tokens)
    np.testing.assert_allclose(trace.attention_mean, visual.mean(1).numpy(), atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(trace.attention_max, visual.amax(1).numpy(), atol=1e-6, rtol=1e-4)
    mean_rows = rows.mean(1)  # (L, T, S)
    on_visual = mean_rows[..., trace.layout.positions].sum(-1)
    on_separators = mean_rows[..., trace.layout.separator_positions].sum(-1)
    np.testing.assert_allclose(trace.attention_shares[..., 0], on_visual.numpy(), atol=1e-5)
    np.testing.assert_allclose(trace.attention_shares[..., 1], on_separators.numpy(), atol=1e-5)
    np.testing.assert_allclose(trace.attention_shares.sum(-1), 1.0, atol=1e-5)
    if fixture == "hd_model":
        assert len(trace.layout.separators) == 7 and (trace.attention_shares[..., 1] > 0).all()


def test_capture_memory_is_tiny_next_to_output_attentions(hd_model):
    image = scene(1088, 1088)
    answer = hd_model.ask(image, "What is in the image?", settings=SamplingSettings(max_new_tokens=8), capture=True)
    layers, heads = 2, 4
    n_visual = answer.trace.layout.num_tokens
    assert answer.trace.captured_bytes == layers * 8 * (2 * n_visual + 3) * 4  # mean + max + 3 shares, float32
    prompt = answer.prompt_length
    full = sum(layers * heads * (prompt + t) * (prompt if t == 0 else 1) for t in range(8)) * 4
    assert answer.trace.captured_bytes * 50 < full


def test_capture_does_not_change_the_answer(hd_model):
    image = scene(700, 500)
    plain = hd_model.ask(image, "What?", settings=SamplingSettings(max_new_tokens=6))
    traced = hd_model.ask(image, "What?", settings=SamplingSettings(max_new_tokens=6), capture=True)
    assert plain.token_ids == traced.token_ids and plain.logprobs == traced.logprobs


def test_capture_streams_and_works_in_4bit(official):
    pipe = tokenpacker.load(official(scale_factor=2, aspect="pad"), device="cpu", quantization="4bit")
    rows = [a.trace.attention_mean.shape[1] for a in pipe.stream(scene(400, 300), "What?", settings=SamplingSettings(max_new_tokens=4), capture=True)]
    assert rows == [1, 2, 3, 4, 4]
    final = pipe.ask(scene(400, 300), "What?", settings=SamplingSettings(max_new_tokens=4), capture=True).trace
    assert np.isfinite(final.attention_mean).all() and (final.attention_mean >= 0).all()
    np.testing.assert_allclose(final.attention_shares.sum(-1), 1.0, atol=1e-4)


def test_region_weights_are_returned_per_view(hd_model):
    answer = hd_model.ask(scene(1024, 768), "What?", settings=SamplingSettings(max_new_tokens=2), capture=True)
    weights = answer.trace.region_weights
    heads = hd_model.config.mm_projector_num_heads
    assert weights.shape == (7, 12, 12, heads, 2, 2)
    np.testing.assert_allclose(weights.sum(axis=(-1, -2)), 1.0, atol=1e-5)
