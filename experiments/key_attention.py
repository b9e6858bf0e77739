"""Head 0's attention at the key words of one conversation, as the training's attention loss sees it: for the
experiment scripts that ask where the key word looks (`conjunction/where_attention_goes.py`,
`count-spread/count_attention.py`; run them with PYTHONPATH=. from the repository root)."""

import torch

from tokenpacker.synthetic import train as T


def key_word_attention(model, example, count_head: bool = False, count_layer: int = T.KEY_LAYER
                       ) -> tuple[list, torch.Tensor]:  # fmt: skip
    """Teacher-forced `batch_loss` on one `ExampleMaker` example -> (its per-answer scores, head 0's attention
    (keys, T) in layer KEY_LAYER at its key words, one row per key word in order). The rows are what
    `attention_mass_loss` is given for that layer (the first layer it is called for), exponentiated.
    `count_head`: instead, head COUNT_HEAD's rows at the example's `counts` (an example made with
    `ExampleMaker(count_head=True)`, without `count_spread`, that has some: the one call taught a spread), the
    head being in layer `count_layer` (the checkpoint's `count_layer` in its training.json)."""
    recorded, original = [], T.attention_mass_loss

    def recording(log_probs, targets, weights=None, spread=None):
        recorded.append((log_probs.detach().exp(), spread))
        return original(log_probs, targets, weights, spread)

    T.attention_mass_loss = recording
    try:
        with torch.no_grad():
            *_, scores = T.batch_loss(model, None, [example], count_layer=count_layer)
    finally:
        T.attention_mass_loss = original
    if not count_head:
        return scores, recorded[0][0]
    spread_calls = [rows for rows, spread in recorded if spread is not None]
    if not example[2].counts or len(spread_calls) != 1:
        raise ValueError("give an example of ExampleMaker(count_head=True), without count_spread, with a counting question")
    return scores, spread_calls[0]
