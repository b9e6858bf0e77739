"""Head 0's attention at the key words of one conversation, as the training's attention loss sees it: for the
experiment scripts that ask where the key word looks (`conjunction/where_attention_goes.py`,
`count-spread/count_attention.py`; run them with PYTHONPATH=. from the repository root)."""

import torch

from tokenpacker.synthetic import train as T


def key_word_attention(model, example) -> tuple[list, torch.Tensor]:
    """Teacher-forced `batch_loss` on one `ExampleMaker` example -> (its per-answer scores, head 0's attention
    (keys, T) in layer KEY_LAYER at its key words, one row per key word in order). The rows are what
    `attention_mass_loss` is given for that layer (the first layer it is called for), exponentiated."""
    recorded, original = [], T.attention_mass_loss

    def recording(log_probs, targets, weights=None, spread=None):
        recorded.append(log_probs.detach().exp())
        return original(log_probs, targets, weights, spread)

    T.attention_mass_loss = recording
    try:
        with torch.no_grad():
            *_, scores = T.batch_loss(model, None, [example])
    finally:
        T.attention_mass_loss = original
    return scores, recorded[0]
