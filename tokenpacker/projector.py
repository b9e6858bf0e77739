"""The TokenPacker projector: coarse point queries + region-to-point injection (arXiv 2407.02392, §3).

Shapes use V = views (images) in the batch, R = raw CLIP grid (24), s = scale factor, G = R / s,
C = vision width (1024), L = feature levels (4), H = LLM hidden size, n = heads, d = C / n.

Parameter names are those of the released checkpoints (`q_proj_1`, `k_proj_1.{0,2}`, `ln_q_1`,
`clip_attn.in_proj_weight`, `mlp.{0,2}`, ...). `clip_attn` is an `nn.MultiheadAttention` used as the
container of its weights: the attention itself is computed here, batched over all regions, so that the
s*s softmax weights of every point query come out for free.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ProjectorOutput:
    tokens: torch.Tensor  # (V, G*G, H), row-major over the point grid
    region_weights: torch.Tensor | None = None  # (V, G, G, n, s, s): softmax over each query's s*s patches


def _mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out_features))


class TokenPackerProjector(nn.Module):
    def __init__(self, vision_width: int, num_levels: int, llm_hidden: int, raw_grid: int, scale_factor: int,
                 num_heads: int, layer_norm_eps: float = 1e-6):  # fmt: skip
        super().__init__()
        if raw_grid % scale_factor:
            raise ValueError(f"scale factor {scale_factor} does not divide the {raw_grid}x{raw_grid} grid")
        self.raw_grid = raw_grid
        self.scale_factor = scale_factor
        self.point_grid = raw_grid // scale_factor
        self.num_heads = num_heads

        self.q_proj_1 = nn.Linear(vision_width, vision_width, bias=False)
        self.k_proj_1 = _mlp(vision_width * num_levels, vision_width, vision_width)
        self.v_proj_1 = _mlp(vision_width * num_levels, vision_width, vision_width)
        self.ln_q_1 = nn.LayerNorm(vision_width, eps=layer_norm_eps)
        self.ln_k_1 = nn.LayerNorm(vision_width, eps=layer_norm_eps)
        self.ln_v_1 = nn.LayerNorm(vision_width, eps=layer_norm_eps)
        self.clip_attn = nn.MultiheadAttention(vision_width, num_heads)
        self.mlp = _mlp(vision_width, llm_hidden, llm_hidden)

    def point_queries(self, features: torch.Tensor) -> torch.Tensor:
        """Bilinear downsampling of the (V, R*R, C) single-level map to (V, G, G, C), computed in float32."""
        V, _, C = features.shape
        R, G = self.raw_grid, self.point_grid
        grid = features.reshape(V, R, R, C).permute(0, 3, 1, 2).float()  # (V, C, R, R)
        points = F.interpolate(grid, size=(G, G), mode="bilinear", align_corners=False, antialias=False)
        return points.permute(0, 2, 3, 1).to(features.dtype)  # (V, G, G, C)

    def regions(self, x: torch.Tensor) -> torch.Tensor:
        """Group a (V, R*R, C) map by point query: (V, G, G, s*s, C), patches row-major inside a region."""
        V, _, C = x.shape
        G, s = self.point_grid, self.scale_factor
        x = x.reshape(V, G, s, G, s, C)  # (V, gy, dy, gx, dx, C)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(V, G, G, s * s, C)

    def forward(self, features: torch.Tensor, multi_level_features: torch.Tensor,
                return_region_weights: bool = False) -> ProjectorOutput:  # fmt: skip
        """features: (V, R*R, C) single-level CLIP patches; multi_level_features: (V, R*R, L*C)."""
        V, N, C = features.shape
        if N != self.raw_grid**2:
            raise ValueError(f"projector expects {self.raw_grid**2} patches per view, got {N}")
        G, s, n = self.point_grid, self.scale_factor, self.num_heads
        d = C // n

        keys = self.ln_k_1(self.k_proj_1(multi_level_features))  # (V, R*R, C)
        values = self.ln_v_1(self.v_proj_1(multi_level_features))
        query = self.ln_q_1(self.q_proj_1(self.point_queries(features)))  # (V, G, G, C)

        # Multi-head attention of each point query over the s*s patches of its own region.
        w_q, w_k, w_v = self.clip_attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.clip_attn.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).reshape(V, G, G, n, 1, d) * d**-0.5  # (V, G, G, n, 1, d)
        k = self.regions(F.linear(keys, w_k, b_k)).reshape(V, G, G, s * s, n, d).transpose(3, 4)  # (V,G,G,n,s*s,d)
        v = self.regions(F.linear(values, w_v, b_v)).reshape(V, G, G, s * s, n, d).transpose(3, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (V, G, G, n, 1, s*s)
        attended = (weights @ v).reshape(V, G, G, C)  # heads concatenated
        injected = self.clip_attn.out_proj(attended)  # (V, G, G, C)

        tokens = self.mlp(injected).reshape(V, G * G, -1)  # (V, G*G, H)
        region_weights = weights.reshape(V, G, G, n, s, s) if return_region_weights else None
        return ProjectorOutput(tokens, region_weights)
