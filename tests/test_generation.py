import pytest
import torch

from tokenpacker import SamplingSettings, Turn
from tokenpacker.errors import ContextLengthError, GenerationSettingsError, PromptError
from tests.conftest import scene


def full_forward_logprobs(pipe, image, question, answer_ids):
    """Teacher-forced, no cache: log-probabilities of every answer token from one forward pass."""
    request = pipe.prepare(image, question)
    with torch.no_grad():
        features = pipe.model.get_image_features(request.image.pixel_values)
        grid = request.image.grid if request.image.mode == "slice" else None
        visual = pipe.model.embed_visual_sequence(features.tokens, grid)
        prompt = pipe.model.build_inputs_embeds(torch.tensor(request.input_ids), visual)
        answer = pipe.model.get_input_embeddings()(torch.tensor([answer_ids]))
        logits = pipe.model(inputs_embeds=torch.cat([prompt, answer], dim=1)).logits[0].float()
    rows = logits[prompt.shape[1] - 1 : prompt.shape[1] - 1 + len(answer_ids)]
    return torch.log_softmax(rows, -1), request


@pytest.mark.parametrize("fixture", ["pad_model", "hd_model"])
def test_greedy_tokens_are_argmax_of_a_full_forward(request, fixture):
    pipe = request.getfixturevalue(fixture)
    image = scene(800, 600, seed=1)
    answer = pipe.ask(image, "What is in the image?", settings=SamplingSettings(max_new_tokens=8))
    logprobs, prepared = full_forward_logprobs(pipe, image, "What is in the image?", answer.token_ids)
    assert answer.token_ids == logprobs.argmax(-1).tolist()
    chosen = logprobs.gather(1, torch.tensor(answer.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(answer.logprobs), chosen, atol=2e-5, rtol=0)
    assert answer.num_visual_tokens == prepared.num_visual_tokens
    assert answer.prompt_length == prepared.sequence_length
    alternatives = answer.alternatives[0]
    assert alternatives[0][0] == answer.token_ids[0] and len(alternatives) == 5
    assert [lp for _, lp in alternatives] == sorted((lp for _, lp in alternatives), reverse=True)
    assert set(answer.timings) >= {"vision_s", "projector_s", "prefill_s", "decode_s", "time_to_first_token_s"}


def test_streaming_grows_and_finishes(pad_model):
    updates = [(list(a.token_ids), a.done) for a in pad_model.stream(scene(300, 300), "Hi?", settings=SamplingSettings(max_new_tokens=5))]
    assert [len(ids) for ids, _ in updates[:-1]] == [1, 2, 3, 4, 5]
    assert updates[-1][1] and not any(done for _, done in updates[:-1])


def test_stop_and_length(pad_model):
    answer = pad_model.ask(scene(300, 300), "Hi?", settings=SamplingSettings(max_new_tokens=3))
    assert len(answer.token_ids) == 3 and answer.finish_reason == "length"
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) > 2

    stopped = pad_model.ask(scene(300, 300), "Hi?", settings=SamplingSettings(max_new_tokens=50), should_stop=stop_after_two)
    assert len(stopped.token_ids) == 2 and stopped.finish_reason == "stopped"


def test_stops_at_end_of_sequence(pad_model, monkeypatch):
    eos = pad_model.tokenizer.eos_token_id
    original = pad_model.model.lm_head.bias
    with torch.no_grad():  # make </s> the most likely token from the 3rd step on
        pad_model.model.lm_head.bias = torch.nn.Parameter(torch.zeros(pad_model.model.lm_head.out_features))
    try:
        pad_model.model.lm_head.bias.data[eos] = 0.0
        steps = []
        for answer in pad_model.stream(scene(300, 300), "Hi?", settings=SamplingSettings(max_new_tokens=20)):
            steps.append(len(answer.token_ids))
            if len(answer.token_ids) == 2:
                pad_model.model.lm_head.bias.data[eos] = 1e4
        assert answer.token_ids[-1] == eos and len(answer.token_ids) == 3 and answer.finish_reason == "eos"
        assert "</s>" not in answer.text
    finally:
        pad_model.model.lm_head.bias = original


def test_sampling_is_seeded(pad_model):
    image = scene(300, 300)
    settings = dict(max_new_tokens=12, temperature=1.5, top_p=0.95)
    a = pad_model.ask(image, "Hi?", settings=SamplingSettings(seed=1, **settings))
    b = pad_model.ask(image, "Hi?", settings=SamplingSettings(seed=1, **settings))
    c = pad_model.ask(image, "Hi?", settings=SamplingSettings(seed=2, **settings))
    greedy = pad_model.ask(image, "Hi?", settings=SamplingSettings(max_new_tokens=12))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids or a.token_ids != greedy.token_ids


def test_top_p_keeps_only_the_nucleus(pad_model):
    from tokenpacker.generation import _choose

    logits = torch.tensor([4.0, 3.0, 0.0, -1.0])
    g = torch.Generator().manual_seed(0)
    picks = {_choose(logits, SamplingSettings(temperature=1.0, top_p=0.7), g) for _ in range(200)}
    assert picks == {0}  # p(0) = 0.70 already reaches top_p
    picks = {_choose(logits, SamplingSettings(temperature=1.0, top_p=0.9), g) for _ in range(300)}
    assert picks == {0, 1}


def test_multi_turn_uses_the_history(pad_model):
    image = scene(300, 300)
    turns = [Turn("What is in the image?", "a red circle"), Turn("And the colour?")]
    request = pad_model.prepare(image, turns)
    assert request.prompt.count("<image>") == 1 and request.prompt.index("<image>") < request.prompt.index("a red circle")
    assert request.input_ids.count(pad_model.tokenizer.eos_token_id) == 1  # the first answer's </s>
    answer = pad_model.ask(image, turns, settings=SamplingSettings(max_new_tokens=4))
    single = pad_model.ask(image, "And the colour?", settings=SamplingSettings(max_new_tokens=4))
    assert answer.prompt_length > single.prompt_length


def test_text_only_question(pad_model):
    answer = pad_model.ask(None, "Hello?", settings=SamplingSettings(max_new_tokens=3))
    assert answer.num_visual_tokens == 0 and answer.grid is None and len(answer.token_ids) == 3


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0), "top-p"),
        (dict(top_p=1.5), "top-p"),
        (dict(max_new_tokens=0), "max new tokens"),
        (dict(max_new_tokens=2.5), "max new tokens"),
    ],
)
def test_invalid_settings(pad_model, settings, message):
    with pytest.raises(GenerationSettingsError, match=message):
        pad_model.ask(None, "Hi?", settings=SamplingSettings(**settings))


def test_empty_and_huge_questions(pad_model):
    with pytest.raises(PromptError, match="empty"):
        pad_model.ask(None, "   ")
    with pytest.raises(PromptError, match="characters long"):
        pad_model.ask(None, "a" * 9000)


def test_context_limits_reduce_tiles_then_turns(official):
    import tokenpacker

    pipe = tokenpacker.load(official(scale_factor=2, aspect="slice", max_positions=1200), device="cpu")
    image = scene(1088, 1088)  # 3x3 = 1450 visual tokens would not fit 1200
    request = pipe.prepare(image, "What is in the image?", reserve=32)
    assert request.image.partition.num_tiles < 9 and request.sequence_length <= 1200 - 32
    assert "tiles instead of 3x3" in request.notices[0]
    history = [Turn("word " * 60, "answer " * 60) for _ in range(4)] + [Turn("What now?")]
    request = pipe.prepare(image, history, reserve=32)
    assert request.sequence_length <= 1200 - 32
    assert any("oldest turn" in n for n in request.notices) and request.turns[-1].question == "What now?"
    assert request.prompt.count("<image>") == 1
    with pytest.raises(ContextLengthError, match="context"):
        pipe.prepare(image, "word " * 1500, reserve=32)
