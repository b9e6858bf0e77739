"""Tiny checkpoints written in the authors' published layout, for tests (random weights, real formats).

This writer does not use the library's loader or model: it spells out the released file layout
(LLaVA config.json, `model.*` / `lm_head` / `model.mm_projector.*` / optionally
`model.vision_tower.vision_tower.vision_model.*` keys, `.bin` or safetensors, sharded or not, a CLIP
directory in transformers-4 layout, a sentencepiece tokenizer) so the loader is tested against the
format, not against itself.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from tokenpacker.tokenizer import LlamaTokenizer

TOKENIZER_LINES = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in the image? ASSISTANT: A red circle, a blue square and a green triangle.",
    "USER: How many objects are there? ASSISTANT: There are 3 objects, 2 circles and 1 square.",
    "What color is the square? yellow. Where is the purple triangle? top left, bottom right, center.",
    "Is there an orange circle? yes. no. Describe the picture in detail, please!",
]


def make_tokenizer(directory: Path, vocab_size: int = 320) -> Path:
    LlamaTokenizer.train(TOKENIZER_LINES * 4, directory, vocab_size=vocab_size)
    # What transformers 4.31's LlamaTokenizer.save_pretrained writes next to tokenizer.model.
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False,
              "legacy": None, "model_max_length": 2048, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer"}  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return directory


def clip_config(released: bool = False) -> CLIPVisionConfig:
    if released:  # CLIP-L/336 geometry (1024 wide, 24 layers, 336/14) with a tiny MLP to stay small
        return CLIPVisionConfig(hidden_size=1024, intermediate_size=64, num_hidden_layers=24, num_attention_heads=16,
                                image_size=336, patch_size=14, projection_dim=32)  # fmt: skip
    return CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=24, num_attention_heads=4,
                            image_size=336, patch_size=14, projection_dim=16)  # fmt: skip


def clip_state_dict(config: CLIPVisionConfig, seed: int) -> dict[str, torch.Tensor]:
    """CLIP vision weights under transformers-4 names (`vision_model.*`)."""
    torch.manual_seed(seed)
    model = CLIPVisionModel(config)
    return {f"vision_model.{k}": v.contiguous() for k, v in model.state_dict().items()}


def make_clip_dir(directory: Path, released: bool = False, seed: int = 0) -> Path:
    """A CLIP vision tower directory as transformers 4 saves it (config, preprocessor, pytorch_model.bin)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = clip_config(released)
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    processor = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                 "feature_extractor_type": "CLIPFeatureExtractor", "image_processor_type": "CLIPImageProcessor",
                 "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                 "resample": 3, "size": 336}  # fmt: skip
    (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    torch.save(clip_state_dict(config, seed), directory / "pytorch_model.bin")
    return directory


def projector_state_dict(width: int, levels: int, llm_hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """The released projector's parameter names and shapes, spelled out (SPEC §2)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.05):
        return torch.randn(*shape, generator=g) * std

    C, H = width, llm_hidden
    tensors = {
        "q_proj_1.weight": rand(C, C),
        "k_proj_1.0.weight": rand(C, levels * C), "k_proj_1.0.bias": rand(C), "k_proj_1.2.weight": rand(C, C), "k_proj_1.2.bias": rand(C),
        "v_proj_1.0.weight": rand(C, levels * C), "v_proj_1.0.bias": rand(C), "v_proj_1.2.weight": rand(C, C), "v_proj_1.2.bias": rand(C),
        "ln_q_1.weight": 1 + rand(C), "ln_q_1.bias": rand(C), "ln_k_1.weight": 1 + rand(C), "ln_k_1.bias": rand(C),
        "ln_v_1.weight": 1 + rand(C), "ln_v_1.bias": rand(C),
        "clip_attn.in_proj_weight": rand(3 * C, C, std=0.3), "clip_attn.in_proj_bias": rand(3 * C),
        "clip_attn.out_proj.weight": rand(C, C), "clip_attn.out_proj.bias": rand(C),
        "mlp.0.weight": rand(H, C), "mlp.0.bias": rand(H), "mlp.2.weight": rand(H, H, std=0.2), "mlp.2.bias": rand(H),
    }  # fmt: skip
    return {f"model.mm_projector.{k}": v for k, v in tensors.items()}


def write_official_checkpoint(
    directory: Path,
    tokenizer_dir: Path,
    clip_dir: Path,
    *,
    scale_factor: int | None = 2,
    aspect: str = "pad",
    patch_num: int | None = 9,
    embed_clip: bool = True,
    weights: str = "bin",  # "bin", "sharded-bin" or "safetensors"
    mm_vision_tower: str | None = None,
    llm_hidden: int = 64,
    max_positions: int = 4096,
    seed: int = 0,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).write_bytes((tokenizer_dir / name).read_bytes())
    vocab = LlamaTokenizer.from_pretrained(tokenizer_dir).sp.get_piece_size()
    clip = CLIPVisionConfig.from_pretrained(clip_dir)

    llm_config = LlamaConfig(vocab_size=vocab, hidden_size=llm_hidden, intermediate_size=2 * llm_hidden,
                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_positions,
                             rms_norm_eps=1e-5, initializer_range=0.1)  # fmt: skip
    torch.manual_seed(seed)
    state = {k: v for k, v in LlamaForCausalLM(llm_config).state_dict().items()}
    state.update(projector_state_dict(clip.hidden_size, 4, llm_hidden, seed + 1))
    if embed_clip:
        clip_weights = torch.load(clip_dir / "pytorch_model.bin", weights_only=True)
        state.update({f"model.vision_tower.vision_tower.{k}": v for k, v in clip_weights.items()})

    config = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": llm_hidden, "intermediate_size": 2 * llm_hidden,
        "initializer_range": 0.02, "max_position_embeddings": max_positions, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 4, "pad_token_id": 0, "pretraining_tp": 1,
        "rms_norm_eps": 1e-5, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.31.0", "use_cache": True, "vocab_size": vocab, "freeze_mm_mlp_adapter": False,
        "image_aspect_ratio": aspect, "mm_hidden_size": clip.hidden_size, "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": mm_vision_tower or str(clip_dir),
        "tune_mm_mlp_adapter": False, "use_mm_proj": True,
    }  # fmt: skip
    if scale_factor is not None:
        config["scale_factor"] = scale_factor
    if patch_num is not None:
        config["patch_num"] = patch_num
    (directory / "config.json").write_text(json.dumps(config, indent=2))

    state = {k: v.contiguous() for k, v in state.items()}
    if weights == "safetensors":
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    elif weights == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:  # two shards and the index, as transformers 4 writes them
        keys = sorted(state)
        halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
        weight_map = {}
        for i, part in enumerate(halves, 1):
            name = f"pytorch_model-0000{i}-of-00002.bin"
            torch.save({k: state[k] for k in part}, directory / name)
            weight_map.update({k: name for k in part})
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return directory
