"""The CLIP vision tower with TokenPacker's two feature selections."""

import torch
from torch import nn
from transformers import CLIPVisionModel

from .configuration import TokenPackerConfig


class TokenPackerVisionTower(nn.Module):
    """Wraps `CLIPVisionModel` as `vision_tower.vision_tower`, the nesting of the released checkpoints."""

    def __init__(self, config: TokenPackerConfig):
        super().__init__()
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.select_layer = config.mm_vision_select_layer
        self.feature_layers = list(config.mm_vision_feature_layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.embeddings.patch_embedding.weight.dtype

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, 3, S, S) -> single-level (V, R*R, C) and multi-level (V, R*R, L*C) patch features.

        `hidden_states[0]` is the embedding output, `hidden_states[l]` the output of encoder layer l;
        the CLS token is dropped.
        """
        out = self.vision_tower(pixel_values.to(self.dtype), output_hidden_states=True)
        hidden = out.hidden_states
        single = hidden[self.select_layer][:, 1:]
        multi = torch.cat([hidden[layer] for layer in self.feature_layers], dim=-1)[:, 1:]
        return single, multi
