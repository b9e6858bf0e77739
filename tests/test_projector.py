import math

import pytest
import torch
import torch.nn.functional as F

from tokenpacker.projector import TokenPackerProjector
from tests.checkpoints import projector_state_dict


def make(width=32, levels=4, hidden=24, scale=2, heads=4, seed=0):
    torch.manual_seed(seed)
    projector = TokenPackerProjector(width, levels, hidden, raw_grid=24, scale_factor=scale, num_heads=heads).eval()
    with torch.no_grad():  # non-trivial LayerNorms and attention
        for name, p in projector.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if "in_proj" in name else 0.05))
    return projector


def literal_region_attention(projector, x, xm):
    """Independent formulation: for every query and head, a softmax over the s*s keys of its region."""
    s, G, R, n = projector.scale_factor, projector.point_grid, projector.raw_grid, projector.num_heads
    V, _, C = x.shape
    d = C // n
    keys = projector.ln_k_1(projector.k_proj_1(xm)).reshape(V, R, R, C)
    values = projector.ln_v_1(projector.v_proj_1(xm)).reshape(V, R, R, C)
    points = F.interpolate(x.reshape(V, R, R, C).permute(0, 3, 1, 2), size=(G, G), mode="bilinear").permute(0, 2, 3, 1)
    query = projector.ln_q_1(projector.q_proj_1(points))
    w_q, w_k, w_v = projector.clip_attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = projector.clip_attn.in_proj_bias.chunk(3)
    out = torch.zeros(V, G, G, C)
    weights = torch.zeros(V, G, G, n, s, s)
    for v in range(V):
        for gy in range(G):
            for gx in range(G):
                q = query[v, gy, gx] @ w_q.T + b_q
                patches_k = keys[v, gy * s : gy * s + s, gx * s : gx * s + s].reshape(s * s, C) @ w_k.T + b_k
                patches_v = values[v, gy * s : gy * s + s, gx * s : gx * s + s].reshape(s * s, C) @ w_v.T + b_v
                heads = []
                for h in range(n):
                    sl = slice(h * d, (h + 1) * d)
                    logits = torch.stack([q[sl] @ patches_k[j, sl] / math.sqrt(d) for j in range(s * s)])
                    a = torch.softmax(logits, 0)
                    weights[v, gy, gx, h] = a.reshape(s, s)
                    heads.append(sum(a[j] * patches_v[j, sl] for j in range(s * s)))
                out[v, gy, gx] = projector.clip_attn.out_proj(torch.cat(heads))
    return projector.mlp(out).reshape(V, G * G, -1), weights


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_literal_per_region_loop(scale):
    projector = make(scale=scale)
    x, xm = torch.randn(2, 576, 32), torch.randn(2, 576, 128)
    with torch.no_grad():
        out = projector(x, xm, return_region_weights=True)
        tokens, weights = literal_region_attention(projector, x, xm)
    assert out.tokens.shape == (2, (24 // scale) ** 2, 24)
    torch.testing.assert_close(out.tokens, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.region_weights, weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.region_weights.sum(dim=(-1, -2)), torch.ones(2, 24 // scale, 24 // scale, 4))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_the_reference_multihead_formulation(scale):
    """The released code runs nn.MultiheadAttention sequence-first, one region per batch entry."""
    projector = make(scale=scale)
    x, xm = torch.randn(3, 576, 32), torch.randn(3, 576, 128)
    G, s = 24 // scale, scale
    with torch.no_grad():
        key = projector.ln_k_1(projector.k_proj_1(xm))  # (V, 576, C)
        value = projector.ln_v_1(projector.v_proj_1(xm))
        q = F.interpolate(x.reshape(3, 24, 24, 32).permute(0, 3, 1, 2), size=(G, G), mode="bilinear")
        query = projector.ln_q_1(projector.q_proj_1(q.permute(0, 2, 3, 1).reshape(3, G * G, 32)))
        regions = lambda t: t.reshape(3, G, s, G, s, 32).permute(2, 4, 1, 3, 0, 5).reshape(s * s, G * G * 3, 32)  # noqa: E731
        attended, _ = projector.clip_attn(query.permute(1, 0, 2).reshape(1, G * G * 3, 32), regions(key), regions(value))
        reference = projector.mlp(attended.reshape(G * G, 3, 32).permute(1, 0, 2))
        ours = projector(x, xm).tokens
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_point_queries_interpolation_is_exact():
    """s=2: the 2x2 mean; s=3: the centre patch; s=4: the mean of the central 2x2."""
    x = torch.randn(1, 576, 8, dtype=torch.float64).float()
    grid = x.reshape(24, 24, 8)
    p2 = make(width=8, heads=2, scale=2).point_queries(x)[0]
    torch.testing.assert_close(p2, grid.reshape(12, 2, 12, 2, 8).mean(dim=(1, 3)), atol=1e-6, rtol=0)
    p3 = make(width=8, heads=2, scale=3).point_queries(x)[0]
    torch.testing.assert_close(p3, grid[1::3, 1::3], atol=1e-6, rtol=0)
    p4 = make(width=8, heads=2, scale=4).point_queries(x)[0]
    central = grid.reshape(6, 4, 6, 4, 8)[:, 1:3, :, 1:3].mean(dim=(1, 3))
    torch.testing.assert_close(p4, central, atol=1e-6, rtol=0)


def test_half_precision_interpolates_in_float32():
    projector = make(width=8, heads=2, scale=3)
    x = torch.randn(1, 576, 8).half()
    assert projector.point_queries(x).dtype == torch.float16
    torch.testing.assert_close(projector.point_queries(x), x.reshape(24, 24, 8)[1::3, 1::3][None])


def test_released_parameter_names_and_count():
    with torch.device("meta"):
        projector = TokenPackerProjector(1024, 4, 4096, raw_grid=24, scale_factor=2, num_heads=8)
    shapes = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    published = {k.removeprefix("model.mm_projector."): tuple(v.shape) for k, v in projector_state_dict(4, 4, 8, 0).items()}
    assert set(shapes) == set(published)
    assert shapes["clip_attn.in_proj_weight"] == (3072, 1024)
    assert shapes["k_proj_1.0.weight"] == (1024, 4096)
    assert shapes["mlp.2.weight"] == (4096, 4096)
    assert sum(math.prod(s) for s in shapes.values()) == 36_722_688


def test_rejects_wrong_patch_count():
    with pytest.raises(ValueError, match="576 patches"):
        make()(torch.randn(1, 575, 32), torch.randn(1, 575, 128))
