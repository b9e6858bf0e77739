"""Answer -> visual attention, captured while the answer is generated.

Full attention matrices are never formed. The LLM runs a registered attention function,
`tokenpacker_sdpa`, which is plain SDPA unless the forward call carries an `attention_recorder`
keyword (transformers hands extra forward kwargs down to the attention function). With a recorder it
also computes, for the *last* query row only, softmax(q . K^T / sqrt(d)) over the cached keys and
keeps the visual columns (head mean and head max) and the attention shares of visual tokens,
separators and text. Memory is O(layers x answer tokens x visual tokens); nothing is stored on the
model, and a forward without a recorder is untouched.

Row t of the trace is the attention of the query that *predicts* answer token t: the prompt's last
position for t = 0, then the position of answer token t - 1.
"""

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_IMPLEMENTATION = "tokenpacker_sdpa"


@dataclass
class CapturedAttention:
    """Answer attention to the visual tokens (CPU float32 arrays, rows = answer tokens so far)."""

    mean: torch.Tensor  # (layers, T, N): head-mean attention to each visual token
    max: torch.Tensor  # (layers, T, N): head-max
    shares: torch.Tensor  # (layers, T, 3): head-mean attention mass on [visual tokens, separators, text]


class AttentionRecorder:
    """Receives one row per layer per forward pass; `step` says which answer token the row predicts."""

    SHARES = ("visual", "separators", "text")

    def __init__(self, num_layers: int, visual_positions, separator_positions, max_rows: int, device=None):
        self.visual = torch.as_tensor(visual_positions, dtype=torch.long, device=device)
        self.separators = torch.as_tensor(separator_positions, dtype=torch.long, device=device)
        self.num_layers = num_layers
        self.max_rows = max_rows
        self.step = 0
        self.rows = 0
        self._mean = self._max = self._shares = None  # allocated on the first record, on the LLM's device
        self._on_device = {}

    def _allocate(self, device) -> None:
        shape = (self.num_layers, self.max_rows, len(self.visual))
        self._mean = torch.zeros(shape, device=device)
        self._max = torch.zeros(shape, device=device)
        self._shares = torch.zeros(self.num_layers, self.max_rows, 3, device=device)

    def _indices(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual and separator positions on `device` (layers may sit on different GPUs with device_map)."""
        if device not in self._on_device:
            self._on_device[device] = (self.visual.to(device), self.separators.to(device))
        return self._on_device[device]

    @torch.no_grad()
    def record(self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        """query: (1, heads, 1, d) last row; key: (1, kv_heads, T, d) all cached keys."""
        if self._mean is None:
            self._allocate(query.device)
        if self.step >= self.max_rows:
            return
        key = repeat_kv(key, query.shape[1] // key.shape[1])
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling  # (1, heads, 1, T)
        probs = torch.softmax(scores, dim=-1)[0, :, 0]  # (heads, T); the last row attends to every key
        visual_at, separators_at = self._indices(probs.device)
        visual = probs[:, visual_at]  # (heads, N)
        visual_mean = visual.mean(0)
        self._mean[layer, self.step] = visual_mean
        self._max[layer, self.step] = visual.amax(0)
        on_visual = visual_mean.sum()
        on_separators = probs[:, separators_at].sum() / probs.shape[0]
        self._shares[layer, self.step] = torch.stack([on_visual, on_separators, 1 - on_visual - on_separators])
        if layer == self.num_layers - 1:
            self.rows = self.step + 1

    def result(self) -> CapturedAttention:
        """The rows recorded so far (on CPU these are views of the buffers, not copies)."""
        if self._mean is None:
            empty = torch.zeros(self.num_layers, 0, len(self.visual))
            return CapturedAttention(empty, empty.clone(), torch.zeros(self.num_layers, 0, 3))
        rows = self.rows
        return CapturedAttention(self._mean[:, :rows].float().cpu(), self._max[:, :rows].float().cpu(),
                                 self._shares[:, :rows].float().cpu())  # fmt: skip

    @property
    def nbytes(self) -> int:
        """Bytes held by the capture buffers."""
        if self._mean is None:
            return 0
        return sum(t.numel() * t.element_size() for t in (self._mean, self._max, self._shares))


def tokenpacker_sdpa(module, query, key, value, attention_mask, attention_recorder=None, **kwargs):
    out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_recorder is not None and getattr(module, "layer_idx", None) is not None:
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        attention_recorder.record(module.layer_idx, query[:, :, -1:], key, scaling)
    return out


AttentionInterface.register(ATTENTION_IMPLEMENTATION, tokenpacker_sdpa)
AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)
