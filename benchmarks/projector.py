"""Our projector forward (with and without the region weights) against a straightforward formulation of
region-to-point attention, as the released code writes it (sequence-first nn.MultiheadAttention over a
reshaped batch of regions), at the released widths (CLIP-L 1024, 4 levels, LLM 4096, 8 heads)."""

import torch
import torch.nn.functional as F

from tokenpacker import TokenPackerProjector

from .common import timeit


def reference_forward(projector: TokenPackerProjector, x: torch.Tensor, xm: torch.Tensor) -> torch.Tensor:
    V, N, C = x.shape
    R, s, G = projector.raw_grid, projector.scale_factor, projector.point_grid
    key = projector.ln_k_1(projector.k_proj_1(xm))
    value = projector.ln_v_1(projector.v_proj_1(xm))
    q = F.interpolate(x.reshape(V, R, R, C).permute(0, 3, 1, 2).float(), size=(G, G), mode="bilinear")
    query = projector.ln_q_1(projector.q_proj_1(q.permute(0, 2, 3, 1).reshape(V, G * G, C).to(x.dtype)))

    def regions(t):  # (V, R*R, C) -> (s*s, G*G*V, C), one region per batch entry
        return t.reshape(V, G, s, G, s, C).permute(2, 4, 1, 3, 0, 5).reshape(s * s, G * G * V, C)

    out, _ = projector.clip_attn(query.permute(1, 0, 2).reshape(1, G * G * V, C), regions(key), regions(value))
    return projector.mlp(out.reshape(G * G, V, C).permute(1, 0, 2))


@torch.inference_mode()
def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    projector = TokenPackerProjector(1024, 4, 4096, raw_grid=24, scale_factor=2, num_heads=8).eval()
    rows = {}
    for views in ((1,) if quick else (1, 10)):
        x, xm = torch.randn(views, 576, 1024), torch.randn(views, 576, 4096)
        torch.testing.assert_close(projector(x, xm).tokens, reference_forward(projector, x, xm), atol=1e-4, rtol=1e-4)
        repeats = 3 if quick else 7
        rows[f"views_{views}"] = {
            "ours_s": timeit(lambda: projector(x, xm), repeats=repeats),
            "ours_with_weights_s": timeit(lambda: projector(x, xm, return_region_weights=True), repeats=repeats),
            "reference_s": timeit(lambda: reference_forward(projector, x, xm), repeats=repeats),
        }
    one = rows["views_1"]
    return {"summary": {"projector_speed_vs_reference": one["reference_s"] / one["ours_s"],
                        "projector_with_weights_speed_vs_reference": one["reference_s"] / one["ours_with_weights_s"]},
            "rows": rows}  # fmt: skip
