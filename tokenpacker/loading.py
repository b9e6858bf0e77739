"""`load()`: one entry point for every checkpoint this library runs.

Accepted, from a local directory or a Hugging Face Hub id:
- the authors' LLaVA-format checkpoints as published (config.json with model_type "llava" and
  LlavaLlamaForCausalLM; weights as safetensors or (sharded) .bin read with weights_only=True; CLIP
  either inside the checkpoint or found through `mm_vision_tower`; a sentencepiece tokenizer);
- the project's own format (model_type "tokenpacker", written by `TokenPackerPipeline.save_pretrained`).
The projector is recognised from the weights. Optional 4-/8-bit loading quantises only the LLM's linear
layers (bitsandbytes); CLIP, the projector and lm_head stay 16/32-bit.
"""

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig, CLIPVisionConfig, CLIPVisionModel, LlamaConfig
from transformers.utils import logging as hf_logging

from .capture import ATTENTION_IMPLEMENTATION
from .configuration import CLIP_MEAN, CLIP_STD, TokenPackerConfig
from .errors import CheckpointFormatError, ModelNotFoundError, TokenPackerError
from .modeling import TokenPackerForCausalLM
from .pipeline import TokenPackerPipeline
from .tokenizer import LlamaTokenizer

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "default-model"
DEFAULT_CLIP = "openai/clip-vit-large-patch14-336"
RELEASED_FEATURE_LAYERS = [12, 16, 22, 23]
PROJECTOR = "model.mm_projector."
CLIP_IN_CHECKPOINT = "model.vision_tower.vision_tower."
# The released checkpoints nest CLIP one level deeper (transformers 4's CLIPVisionModel.vision_model).
OFFICIAL_KEY_MAPPING = {r"^model\.vision_tower\.vision_tower\.vision_model\.": "model.vision_tower.vision_tower."}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# -- finding files -----------------------------------------------------------------------------------------
def _download(repo_id: str, what: str, allow_patterns: list[str]) -> Path:
    """A hub snapshot of `repo_id`, or ModelNotFoundError saying what was looked for where."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as e:  # offline, unknown repo, gated, timeouts: all end the same way for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(
            f"{what} '{repo_id}' is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}: {reason[:200]})"
        ) from None


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    if model is None:
        if not (DEFAULT_MODEL / "config.json").is_file():
            raise ModelNotFoundError(f"the embedded default model is missing: {DEFAULT_MODEL}/config.json does not exist")
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but has no config.json, so it is not a model checkpoint")
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; pass the checkpoint's directory")
    if HUB_ID.match(str(model)) and not str(model).startswith((".", "/", "~")):
        return _download(str(model), "model", ["*.json", "*.model", "*.safetensors", "*.bin"])
    raise ModelNotFoundError(f"model directory {path} does not exist")


def _resolve_clip_dir(name: str, model_dir: Path, need_weights: bool) -> Path:
    """mm_vision_tower may be a hub id, an existing path, or a path that only existed on the authors' machine
    (e.g. ./clip-vit-large-patch14-336): then the CLIP-L/336 release it names is used."""
    for candidate in (Path(name).expanduser(), model_dir / name):
        if candidate.is_dir():
            return candidate
    repo = name if HUB_ID.match(name) and not name.startswith((".", "/", "~")) else DEFAULT_CLIP
    patterns = ["*.json"] + (["*.safetensors"] if need_weights else [])
    directory = _download(repo, "CLIP vision tower" + (f" (named by mm_vision_tower={name!r})" if repo != name else ""),
                          patterns)  # fmt: skip
    if need_weights and not list(directory.glob("*.safetensors")):
        directory = _download(repo, "CLIP vision tower", ["*.json", "pytorch_model.bin"])
    return directory


def _checkpoint_keys(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape, read without loading the weights."""
    shapes = {}
    safetensors = sorted(model_dir.glob("*.safetensors"))
    if safetensors:
        from safetensors import safe_open

        for file in safetensors:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        return shapes
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointFormatError(f"{model_dir} has no weights (*.safetensors or pytorch_model*.bin)")
    for file in bins:
        try:
            state = torch.load(file, map_location="meta", weights_only=True, mmap=True)
        except Exception as e:
            raise CheckpointFormatError(f"{file} could not be read as a weights_only PyTorch checkpoint: {e}") from None
        shapes.update({k: tuple(v.shape) for k, v in state.items()})
    return shapes


# -- configs ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"{path} is not readable JSON: {e}") from None


def _clip_processor_settings(clip_dir: Path | None) -> dict:
    settings = {"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}
    if clip_dir is None or not (clip_dir / "preprocessor_config.json").is_file():
        return settings
    pre = _read_json(clip_dir / "preprocessor_config.json")
    size, crop = pre.get("size"), pre.get("crop_size")
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height"))
    if isinstance(crop, dict):
        crop = crop.get("height")
    settings.update(image_mean=pre.get("image_mean", settings["image_mean"]),
                    image_std=pre.get("image_std", settings["image_std"]))  # fmt: skip
    if size:
        settings["image_shortest_edge"] = int(size)
    if crop:
        settings["image_crop_size"] = int(crop)
    return settings


def _scale_factor_from_name(name: str, raw_grid: int) -> int | None:
    """Released repos say their token count: TokenPacker-7b-144token (s=2), -64token (s=3), -36token (s=4)."""
    match = re.search(r"(\d+)token", name)
    if match:
        side = int(round(int(match.group(1)) ** 0.5))
        if side * side == int(match.group(1)) and side and raw_grid % side == 0:
            return raw_grid // side
    return None


def official_config(model_dir: Path, raw: dict, keys: dict, tokenizer: LlamaTokenizer, vision_tower: str | None) -> tuple[TokenPackerConfig, Path | None]:
    """TokenPackerConfig for a LLaVA-format checkpoint, and the CLIP directory when CLIP is not inside it."""
    if not any(k.startswith(PROJECTOR) for k in keys):
        raise CheckpointFormatError(f"{model_dir} has no multimodal projector weights ({PROJECTOR}*)")
    if f"{PROJECTOR}q_proj_1.weight" not in keys or f"{PROJECTOR}clip_attn.in_proj_weight" not in keys:
        raise CheckpointFormatError(
            f"{model_dir} has a multimodal projector that is not TokenPacker (no q_proj_1 / clip_attn weights), "
            "e.g. a LLaVA-1.5 MLP projector; this library runs TokenPacker checkpoints"
        )
    if raw.get("mm_use_im_start_end"):
        raise CheckpointFormatError(f"{model_dir} uses <im_start>/<im_end> image tokens, which TokenPacker releases do not")
    has_clip = any(k.startswith(CLIP_IN_CHECKPOINT) for k in keys)
    clip_name = vision_tower or raw.get("mm_vision_tower") or raw.get("vision_tower") or DEFAULT_CLIP
    clip_dir = _resolve_clip_dir(clip_name, model_dir, need_weights=not has_clip)
    try:
        vision_config = CLIPVisionConfig.from_pretrained(clip_dir)
    except Exception as e:
        raise CheckpointFormatError(f"{clip_dir} does not hold a CLIP vision config: {e}") from None

    text_fields = set(LlamaConfig().to_dict())
    text_config = LlamaConfig(**{k: v for k, v in raw.items() if k in text_fields and k not in ("model_type", "architectures")})
    width = keys[f"{PROJECTOR}q_proj_1.weight"][1]
    levels = keys[f"{PROJECTOR}k_proj_1.0.weight"][1] // width
    raw_grid = vision_config.image_size // vision_config.patch_size
    scale = raw.get("scale_factor") or _scale_factor_from_name(str(model_dir), raw_grid) or 2
    feature_layers = RELEASED_FEATURE_LAYERS if levels == 4 else list(range(vision_config.num_hidden_layers - levels, vision_config.num_hidden_layers))
    config = TokenPackerConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        scale_factor=int(scale),
        mm_vision_select_layer=raw.get("mm_vision_select_layer", -2),
        mm_vision_select_feature=raw.get("mm_vision_select_feature", "patch"),
        mm_vision_feature_layers=feature_layers,
        mm_projector_num_heads=max(1, width // 128),  # the released projector: 1024 // 128 = 8 heads
        image_aspect_ratio=raw.get("image_aspect_ratio") or "pad",
        patch_num=raw.get("patch_num") or 9,
        view_separator_token_id=tokenizer.convert_tokens_to_ids(","),
        row_separator_token_id=tokenizer.convert_tokens_to_ids("\n"),
        **_clip_processor_settings(clip_dir),
    )
    return config, None if has_clip else clip_dir


# -- the entry point --------------------------------------------------------------------------------------
def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TokenPackerError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def quantization_config(quantization: str | None, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization is None:
        return None
    skip = ["model.vision_tower", "model.mm_projector", "lm_head"]  # matched as module-name prefixes
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip)  # fmt: skip
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    raise TokenPackerError(f"quantization must be '4bit', '8bit' or none, got {quantization!r}")


def load(
    model: str | os.PathLike | None = None,
    *,
    device: str | None = "auto",
    dtype: str | torch.dtype | None = None,
    quantization: str | None = None,
    vision_tower: str | None = None,
    device_map: str | dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> TokenPackerPipeline:
    """Load a TokenPacker checkpoint (directory or hub id; None = the embedded default model).

    device: "auto" (CUDA if present), "cpu", "cuda", "cuda:1"; dtype: default float16 on GPU, float32 on
    CPU; quantization: None, "4bit" (NF4) or "8bit"; vision_tower: overrides the config's
    mm_vision_tower; device_map: e.g. "auto" to spread a large model over several GPUs (accelerate).
    """
    say = progress or (lambda message: None)
    hf_logging.disable_progress_bar()
    torch_device = resolve_device(device)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise TokenPackerError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    dtype = dtype or (torch.float16 if torch_device.type == "cuda" else torch.float32)

    say(f"Finding {model or 'the embedded default model'}")
    model_dir = resolve_model_dir(model)
    raw = _read_json(model_dir / "config.json")
    tokenizer = LlamaTokenizer.from_pretrained(model_dir)
    model_type = raw.get("model_type")
    clip_dir, key_mapping = None, None
    if model_type == "tokenpacker":
        config = TokenPackerConfig.from_pretrained(model_dir)
    elif model_type == "llava" or "LlavaLlamaForCausalLM" in (raw.get("architectures") or []):
        say("Reading the LLaVA-format checkpoint")
        config, clip_dir = official_config(model_dir, raw, _checkpoint_keys(model_dir), tokenizer, vision_tower)
        key_mapping = OFFICIAL_KEY_MAPPING
    else:
        raise CheckpointFormatError(
            f"{model_dir}/config.json has model_type {model_type!r}; expected 'llava' (released TokenPacker "
            "checkpoints) or 'tokenpacker' (this project's format)"
        )

    say(f"Loading weights on {torch_device}" + (f" with {quantization} quantization" if quantization else ""))
    compute_dtype = dtype if torch_device.type == "cuda" or dtype != torch.float16 else torch.float32
    kwargs = dict(config=config, dtype=dtype, quantization_config=quantization_config(quantization, compute_dtype),
                  attn_implementation=ATTENTION_IMPLEMENTATION, output_loading_info=True)  # fmt: skip
    if key_mapping:
        kwargs["key_mapping"] = key_mapping
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif quantization or torch_device.type == "cuda":
        kwargs["device_map"] = {"": str(torch_device)}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # missing CLIP keys are expected when CLIP comes from its own directory
    try:
        network, info = TokenPackerForCausalLM.from_pretrained(model_dir, **kwargs)
    except TokenPackerError:
        raise
    except Exception as e:
        raise CheckpointFormatError(f"the weights in {model_dir} could not be loaded: {type(e).__name__}: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)

    missing = [k for k in info["missing_keys"] if not (clip_dir and k.startswith(CLIP_IN_CHECKPOINT))]
    if missing:
        raise CheckpointFormatError(f"{model_dir} lacks {len(missing)} weights the model needs, e.g. {missing[0]}")
    if clip_dir is not None:
        say(f"Loading the CLIP vision tower from {clip_dir}")
        clip = CLIPVisionModel.from_pretrained(clip_dir, dtype=network.vision_dtype)
        result = network.model.vision_tower.vision_tower.load_state_dict(clip.state_dict(), strict=False)
        if result.missing_keys:
            raise CheckpointFormatError(f"{clip_dir} lacks CLIP weights, e.g. {result.missing_keys[0]}")
    if device_map is None and not quantization and torch_device.type != "cuda":
        network.to(torch_device)
    network.eval().requires_grad_(False)
    say("Ready")
    return TokenPackerPipeline(network, tokenizer, source=str(model or DEFAULT_MODEL), quantization=quantization)
