"""The oracle position code: a diagnostic that hands every point token its place on the view's grid."""

import torch


def grid_code(grid: int, dim: int) -> torch.Tensor:
    """(grid * grid, dim) unit-norm rows, row-major (the tokens' order): sines and cosines of the row in the first
    half of the channels, of the column in the second, from half a period over the grid up to about Nyquist."""
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    freqs = torch.pi / grid * grid ** (torch.arange(dim // 4) / (dim // 4))
    parts = [f(c.reshape(-1, 1).float() * freqs) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    code = torch.cat(parts, dim=1)
    return code / code.norm(dim=1, keepdim=True)


def add_oracle_position(model, scale: float) -> None:
    """Add `scale` x (the tokens' mean norm) x grid_code to the projector's output, in every view, from now on."""
    code = grid_code(model.config.point_grid, model.config.text_config.hidden_size)

    def hook(module, inputs, output):
        size = scale * output.tokens.detach().norm(dim=-1).mean()
        output.tokens = output.tokens + size * code.to(output.tokens.dtype)
        return output

    model.model.mm_projector.register_forward_hook(hook)
