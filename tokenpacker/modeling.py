"""TokenPackerForCausalLM: CLIP -> TokenPacker projector -> LLaMA, with the visual embeddings spliced in at
the image placeholder.

Module names mirror the released LLaVA-format checkpoints: `model.embed_tokens`, `model.layers.*`,
`model.norm`, `lm_head`, `model.mm_projector.*` and `model.vision_tower.vision_tower.*` (CLIP), so
their state dicts load without renaming except CLIP's old `vision_model.` level.
"""

import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, LlamaModel, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import IMAGE_TOKEN_INDEX, TokenPackerConfig
from .layout import visual_sequence
from .projector import TokenPackerProjector
from .vision import TokenPackerVisionTower


@dataclass
class ImageFeatures:
    tokens: torch.Tensor  # (V, G*G, H) in the LLM's embedding dtype
    region_weights: torch.Tensor | None  # (V, G, G, heads, s, s) float32, when asked for


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TokenPackerPreTrainedModel(PreTrainedModel):
    config: TokenPackerConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True


class TokenPackerModel(LlamaModel):
    """The LLaMA decoder, plus the vision tower and the projector it is fed by."""

    def __init__(self, config: TokenPackerConfig):
        super().__init__(config.text_config)
        vision = config.vision_config
        self.vision_tower = TokenPackerVisionTower(config)
        self.mm_projector = TokenPackerProjector(
            vision_width=vision.hidden_size,
            num_levels=len(config.mm_vision_feature_layers),
            llm_hidden=config.text_config.hidden_size,
            raw_grid=config.raw_grid,
            scale_factor=config.scale_factor,
            num_heads=config.mm_projector_num_heads,
        )
        self.post_init()


class TokenPackerForCausalLM(TokenPackerPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TokenPackerConfig):
        super().__init__(config)
        self.model = TokenPackerModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @property
    def vision_dtype(self) -> torch.dtype:
        return self.model.vision_tower.dtype

    @property
    def vision_device(self) -> torch.device:
        return self.model.vision_tower.vision_tower.embeddings.patch_embedding.weight.device

    def get_image_features(self, pixel_values: torch.Tensor, return_region_weights: bool = False,
                           timings: dict | None = None) -> ImageFeatures:  # fmt: skip
        """(V, 3, S, S) views -> (V, G*G, H) visual tokens (and the projector's region-to-point weights).

        With `timings`, the wall time of the vision tower and of the projector is stored in it.
        """
        pixel_values = pixel_values.to(self.vision_device, self.vision_dtype)
        start = time.perf_counter()
        features, multi_level = self.model.vision_tower(pixel_values)
        _synchronize(pixel_values.device)
        middle = time.perf_counter()
        out = self.model.mm_projector(features, multi_level, return_region_weights)
        _synchronize(pixel_values.device)
        if timings is not None:
            timings["vision_s"] = middle - start
            timings["projector_s"] = time.perf_counter() - middle
        weights = out.region_weights.float() if out.region_weights is not None else None
        return ImageFeatures(out.tokens.to(self.model.embed_tokens.weight.dtype), weights)

    def embed_visual_sequence(self, image_tokens: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        """Lay out (V, G*G, H) view tokens with the separator embeddings: (num_visual_embeddings, H).

        `grid` is (rows, cols) in HD slice mode and None in pad mode (SPEC §2, HD step 5).
        """
        separator_ids = {",": self.config.view_separator_token_id, "\n": self.config.row_separator_token_id}
        embed = self.model.embed_tokens
        pieces = []
        for kind, what in visual_sequence(grid):
            if kind == "view":
                pieces.append(image_tokens[what])
            else:
                pieces.append(embed(torch.tensor([separator_ids[what]], device=embed.weight.device)))
        expected_views = 1 if grid is None else grid[0] * grid[1] + (grid[0] * grid[1] > 1)
        if image_tokens.shape[0] != expected_views:
            raise ValueError(f"grid {grid} needs {expected_views} views, got {image_tokens.shape[0]}")
        return torch.cat(pieces, dim=0)

    def build_inputs_embeds(self, input_ids: torch.Tensor, visual_embeds: torch.Tensor | None) -> torch.Tensor:
        """(T,) prompt ids with at most one IMAGE_TOKEN_INDEX -> (1, T - 1 + N, H) input embeddings."""
        input_ids = input_ids.to(self.model.embed_tokens.weight.device)
        slots = (input_ids == IMAGE_TOKEN_INDEX).nonzero().flatten()
        if visual_embeds is None:
            if len(slots):
                raise ValueError(f"the prompt has {len(slots)} image placeholder(s) but no image was given")
            return self.model.embed_tokens(input_ids)[None]
        if len(slots) != 1:
            raise ValueError(f"the prompt has {len(slots)} image placeholders, expected 1 for the one image given")
        at = int(slots[0])
        before = self.model.embed_tokens(input_ids[:at])
        after = self.model.embed_tokens(input_ids[at + 1 :])
        return torch.cat([before, visual_embeds.to(before.dtype), after], dim=0)[None]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        return CausalLMOutputWithPast(
            logits=self.lm_head(hidden_states),
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


AutoConfig.register("tokenpacker", TokenPackerConfig)
AutoModelForCausalLM.register(TokenPackerConfig, TokenPackerForCausalLM)
