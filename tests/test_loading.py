import json
import os
import pickle

import pytest
import torch

import tokenpacker
from tokenpacker import SamplingSettings
from tokenpacker.errors import CheckpointFormatError, ModelNotFoundError
from tests.checkpoints import make_clip_dir, write_official_checkpoint
from tests.conftest import scene

QUESTION = "What is in the image?"
GREEDY = SamplingSettings(max_new_tokens=6)


def answer(pipe, image=None, **kwargs):
    return pipe.ask(image or scene(640, 480), QUESTION, settings=GREEDY, **kwargs)


def test_official_config_is_read(pad_model, hd_model, tokenizer_dir):
    config = pad_model.config
    assert config.image_aspect_ratio == "pad" and config.scale_factor == 2 and config.point_grid == 12
    assert config.mm_vision_feature_layers == [12, 16, 22, 23] and config.mm_vision_select_layer == -2
    assert config.row_separator_token_id == 0  # "\n" is <unk>
    assert config.view_separator_token_id == pad_model.tokenizer.convert_tokens_to_ids(",") != 0
    assert hd_model.config.image_aspect_ratio == "slice" and hd_model.config.patch_num == 9


def test_weights_land_where_the_checkpoint_puts_them(official, clip_dir):
    directory = official(scale_factor=2, aspect="pad")
    pipe = tokenpacker.load(directory, device="cpu")
    saved = torch.load(directory / "pytorch_model.bin", weights_only=True)
    state = pipe.model.state_dict()
    for key in ["model.mm_projector.clip_attn.in_proj_weight", "model.mm_projector.mlp.2.bias", "model.layers.1.mlp.up_proj.weight", "lm_head.weight"]:
        torch.testing.assert_close(state[key], saved[key], rtol=0, atol=0)
    clip = torch.load(clip_dir / "pytorch_model.bin", weights_only=True)
    torch.testing.assert_close(state["model.vision_tower.vision_tower.encoder.layers.22.mlp.fc1.weight"],
                               clip["vision_model.encoder.layers.22.mlp.fc1.weight"], rtol=0, atol=0)  # fmt: skip


@pytest.mark.parametrize("variant", [dict(weights="sharded-bin"), dict(weights="safetensors"), dict(embed_clip=False)])
def test_every_published_weight_layout_gives_the_same_answer(official, pad_model, variant):
    pipe = tokenpacker.load(official(scale_factor=2, aspect="pad", **variant), device="cpu")
    a, b = answer(pipe), answer(pad_model)
    assert a.token_ids == b.token_ids
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-6)


def test_own_format_round_trip_is_identical(official, tmp_path):
    for aspect in ("pad", "slice"):
        pipe = tokenpacker.load(official(scale_factor=3, aspect=aspect), device="cpu")
        pipe.save_pretrained(tmp_path / aspect)
        saved = json.loads((tmp_path / aspect / "config.json").read_text())
        assert saved["model_type"] == "tokenpacker" and (tmp_path / aspect / "model.safetensors").is_file()
        again = tokenpacker.load(tmp_path / aspect, device="cpu")
        image = scene(900, 500)
        a, b = answer(pipe, image), answer(again, image)
        assert a.token_ids == b.token_ids and a.logprobs == b.logprobs
        rows, cols = a.grid
        expected = 64 if aspect == "pad" else rows * cols * 64 + rows * cols + 65  # tiles, separators, thumbnail
        assert a.num_visual_tokens == b.num_visual_tokens == expected


def test_scale_factor_from_released_name_when_config_lacks_it(tmp_path, tokenizer_dir, clip_dir):
    directory = write_official_checkpoint(tmp_path / "TokenPacker-7b-36token", tokenizer_dir, clip_dir, scale_factor=None)
    assert tokenpacker.load(directory, device="cpu").config.scale_factor == 4
    plain = write_official_checkpoint(tmp_path / "plain", tokenizer_dir, clip_dir, scale_factor=None, patch_num=None, aspect="slice")
    pipe = tokenpacker.load(plain, device="cpu")
    assert pipe.config.scale_factor == 2 and pipe.config.patch_num == 9  # SPEC defaults


def test_missing_vision_tower_path_falls_back_and_can_be_overridden(tmp_path, tokenizer_dir, clip_dir):
    directory = write_official_checkpoint(tmp_path / "m", tokenizer_dir, clip_dir, embed_clip=False,
                                          mm_vision_tower="./clip-vit-large-patch14-336")  # fmt: skip
    with pytest.raises(ModelNotFoundError) as error:
        tokenpacker.load(directory, device="cpu")
    message = str(error.value)
    assert "openai/clip-vit-large-patch14-336" in message and "./clip-vit-large-patch14-336" in message
    assert "\n" not in message
    pipe = tokenpacker.load(directory, device="cpu", vision_tower=str(clip_dir))
    assert pipe.config.vision_config.hidden_size == 32


def test_clear_errors_for_missing_models(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        tokenpacker.load(tmp_path / "nope", device="cpu")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        tokenpacker.load(tmp_path, device="cpu")
    with pytest.raises(ModelNotFoundError, match="Hugging Face Hub") as error:
        tokenpacker.load("sunshine-lwt/TokenPacker-7b-144token", device="cpu")  # HF_HUB_OFFLINE in tests
    assert "sunshine-lwt/TokenPacker-7b-144token" in str(error.value) and "\n" not in str(error.value)


def test_mlp_projector_is_recognised_from_the_weights(official, tmp_path):
    directory = tmp_path / "llava15"
    source = official(scale_factor=2, aspect="pad")
    directory.mkdir()
    for name in os.listdir(source):
        (directory / name).write_bytes((source / name).read_bytes())
    config = json.loads((directory / "config.json").read_text())
    config["mm_projector_type"] = "tokenpacker"  # the config lies; the weights decide
    (directory / "config.json").write_text(json.dumps(config))
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("model.mm_projector.")}
    state["model.mm_projector.0.weight"] = torch.zeros(64, 32)
    state["model.mm_projector.2.weight"] = torch.zeros(64, 64)
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match="not TokenPacker"):
        tokenpacker.load(directory, device="cpu")


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/tokenpacker-pwned",))


def test_bin_files_are_read_with_weights_only(official, tmp_path):
    directory = tmp_path / "evil"
    source = official(scale_factor=2, aspect="pad")
    directory.mkdir()
    for name in os.listdir(source):
        if name != "pytorch_model.bin":
            (directory / name).write_bytes((source / name).read_bytes())
    with open(directory / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.mm_projector.q_proj_1.weight": Payload()}, f)
    if os.path.exists("/tmp/tokenpacker-pwned"):
        os.remove("/tmp/tokenpacker-pwned")
    with pytest.raises(CheckpointFormatError, match="weights_only"):
        tokenpacker.load(directory, device="cpu")
    assert not os.path.exists("/tmp/tokenpacker-pwned")


def test_4bit_nf4_on_cpu_quantises_only_the_llm(official, pad_model):
    import bitsandbytes as bnb

    pipe = tokenpacker.load(official(scale_factor=2, aspect="pad"), device="cpu", quantization="4bit")
    model = pipe.model
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert isinstance(model.model.layers[1].mlp.down_proj, bnb.nn.Linear4bit)
    assert model.model.layers[0].self_attn.q_proj.weight.quant_type == "nf4"
    assert type(model.lm_head) is torch.nn.Linear
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.mm_projector.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.vision_tower.modules())
    assert model.get_memory_footprint() < pad_model.model.get_memory_footprint()

    # Each NF4 layer holds the 4-bit quantisation of the checkpoint's weight and multiplies with it
    # (checked before any forward: bitsandbytes repacks CPU weights for its kernel on first use).
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            original = pad_model.model.get_submodule(name).weight
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            assert (weight - original).norm() < 0.15 * original.norm(), name
            x = torch.randn(5, original.shape[1])
            with torch.no_grad():  # bitsandbytes' CPU kernel rounds through bfloat16: ~0.5% error
                assert (module(x) - x @ weight.T).norm() < 0.02 * (x @ weight.T).norm(), name

    request = pad_model.prepare(scene(640, 480), QUESTION)

    def logits(p):
        with torch.no_grad():
            features = p.model.get_image_features(request.image.pixel_values)
            visual = p.model.embed_visual_sequence(features.tokens, None)
            return p.model(inputs_embeds=p.model.build_inputs_embeds(torch.tensor(request.input_ids), visual)).logits[0].float()

    full, quant = logits(pad_model), logits(pipe)
    # Close to the unquantised model...
    cosine = torch.nn.functional.cosine_similarity(full, quant, dim=-1)
    assert cosine.mean() > 0.95 and cosine.min() > 0.85, cosine


def test_released_geometry_clip_l_and_the_8_head_projector(tmp_path_factory, tokenizer_dir):
    """CLIP-L/336 geometry (1024 wide, 24 layers, 336/14): the 1024/4096/8-head projector of the releases."""
    root = tmp_path_factory.mktemp("released")
    clip = make_clip_dir(root / "clip", released=True, seed=5)
    directory = write_official_checkpoint(root / "TokenPacker-HD-7b-9patch-144token", tokenizer_dir, clip,
                                          aspect="slice", patch_num=9, embed_clip=False)  # fmt: skip
    pipe = tokenpacker.load(directory, device="cpu")
    projector = pipe.model.model.mm_projector
    assert projector.num_heads == 8 and projector.k_proj_1[0].weight.shape == (1024, 4096)
    assert projector.clip_attn.in_proj_weight.shape == (3072, 1024)
    image = scene(320, 300)  # one tile: a single view keeps this test quick
    answer = pipe.ask(image, QUESTION, settings=SamplingSettings(max_new_tokens=3), capture=True)
    assert answer.grid == (1, 1) and answer.num_visual_tokens == 145
    assert answer.trace.region_weights.shape == (1, 12, 12, 8, 2, 2)
    request = pipe.prepare(image, QUESTION)
    with torch.no_grad():
        features, multi = pipe.model.model.vision_tower(request.image.pixel_values)
    assert features.shape == (1, 576, 1024) and multi.shape == (1, 576, 4096)
    from tests.test_projector import literal_region_attention

    with torch.no_grad():
        tokens, weights = literal_region_attention(projector, features, multi)
        ours = projector(features, multi, return_region_weights=True)
    assert (ours.tokens - tokens).norm() < 1e-5 * tokens.norm()  # float32 summation order only
    torch.testing.assert_close(ours.region_weights, weights, atol=1e-5, rtol=1e-4)


def test_registered_with_the_auto_classes(official, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    pipe = tokenpacker.load(official(scale_factor=2, aspect="pad"), device="cpu")
    pipe.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "TokenPackerConfig"
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(model).__name__ == "TokenPackerForCausalLM"
    state = pipe.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
