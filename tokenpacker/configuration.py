"""TokenPackerConfig: the LLaMA LLM, the CLIP vision tower, the projector and the image geometry.

Field names follow the authors' LLaVA-format config.json where one exists (`mm_vision_select_layer`,
`scale_factor`, `image_aspect_ratio`, `patch_num`, ...), so that converting a released checkpoint is a
copy. The released models fix the projector widths to CLIP-L (1024 wide, 4 levels, 8 heads, layers
12/16/22/23); here they follow the vision tower so that small models work too.
"""

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TOKEN_INDEX = -200  # the image placeholder id in prompt token ids, as in the reference code


@strict
class TokenPackerConfig(PreTrainedConfig):
    r"""
    Configuration of a TokenPacker MLLM (vision tower -> TokenPacker projector -> LLaMA).

    Args:
        text_config: the LLaMA configuration.
        vision_config: the CLIP vision configuration (`image_size / patch_size` is the raw grid R).
        scale_factor: s; the projector emits G x G = (R/s)^2 point queries per view.
        mm_vision_select_layer: hidden state used for the point queries (-2 = penultimate layer).
        mm_vision_select_feature: "patch" drops the CLS token, "cls_patch" keeps it (not supported by
            the projector, which needs exactly R*R tokens).
        mm_vision_feature_layers: hidden states concatenated (in this order) into the multi-level keys.
        mm_projector_num_heads: heads of the region-to-point attention.
        image_aspect_ratio: "pad" (one square view) or "slice" (TokenPacker-HD dynamic partition).
        patch_num: HD tile budget selecting the candidate grid list (9, 16 or 25).
        image_mean, image_std: CLIP normalisation.
        image_shortest_edge, image_crop_size: pad-mode CLIP processor (resize shortest edge, centre crop).
        view_separator_token_id: embedding placed between tiles of a row (the reference's ",").
        row_separator_token_id: embedding after each tile row and after the thumbnail (the reference's
            "\n", which the LLaMA tokenizer maps to <unk>).
    """

    model_type = "tokenpacker"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=LlamaConfig),
        "vision_config": SubConfigSpec(config_class=CLIPVisionConfig),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    scale_factor: int = 2
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_vision_feature_layers: list[int] | None = None
    mm_projector_num_heads: int = 8
    image_aspect_ratio: str = "pad"
    patch_num: int = 9
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    image_shortest_edge: int | None = None
    image_crop_size: int | None = None
    view_separator_token_id: int = 0
    row_separator_token_id: int = 0
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.mm_vision_feature_layers is None:
            self.mm_vision_feature_layers = [12, 16, 22, 23]
        self.mm_vision_feature_layers = [int(layer) for layer in self.mm_vision_feature_layers]
        if self.image_mean is None:
            self.image_mean = list(CLIP_MEAN)
        if self.image_std is None:
            self.image_std = list(CLIP_STD)
        if self.image_shortest_edge is None:
            self.image_shortest_edge = self.vision_config.image_size
        if self.image_crop_size is None:
            self.image_crop_size = self.vision_config.image_size

    def validate_architecture(self):
        grid = self.raw_grid
        if self.vision_config.image_size % self.vision_config.patch_size:
            raise ValueError(
                f"CLIP image_size {self.vision_config.image_size} is not a multiple of patch_size "
                f"{self.vision_config.patch_size}."
            )
        if grid % self.scale_factor:
            raise ValueError(f"scale_factor {self.scale_factor} does not divide the {grid}x{grid} patch grid.")
        if self.vision_config.hidden_size % self.mm_projector_num_heads:
            raise ValueError(
                f"vision width {self.vision_config.hidden_size} is not divisible by "
                f"{self.mm_projector_num_heads} projector heads."
            )
        if self.image_aspect_ratio not in ("pad", "slice"):
            raise ValueError(f"image_aspect_ratio must be 'pad' or 'slice', got {self.image_aspect_ratio!r}.")
        if self.patch_num not in (9, 16, 25):
            raise ValueError(f"patch_num must be 9, 16 or 25, got {self.patch_num}.")
        if self.mm_vision_select_feature != "patch":
            raise ValueError("only mm_vision_select_feature='patch' is supported (the projector needs R*R patches).")
        layers = self.vision_config.num_hidden_layers
        for layer in [*self.mm_vision_feature_layers, self.mm_vision_select_layer]:
            if not -(layers + 1) <= layer <= layers:
                raise ValueError(f"vision feature layer {layer} does not exist in a {layers}-layer CLIP.")

    # Derived geometry: one place, so nothing else writes 24, 336 or 144.
    @property
    def view_size(self) -> int:
        """Side in pixels of one CLIP view (336 for CLIP-L/336)."""
        return self.vision_config.image_size

    @property
    def raw_grid(self) -> int:
        """R: CLIP patches per side of a view (24)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def point_grid(self) -> int:
        """G = R / s: point queries per side of a view."""
        return self.raw_grid // self.scale_factor

    @property
    def tokens_per_view(self) -> int:
        return self.point_grid**2


__all__ = ["TokenPackerConfig", "CLIP_MEAN", "CLIP_STD", "IMAGE_TOKEN_INDEX"]
