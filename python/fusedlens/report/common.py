"""What every report shares: matplotlib without a display, tokens as display strings."""
from __future__ import annotations

import torch


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def token_strings(tokenizer, ids: torch.Tensor) -> list[str]:
    """The text of each token id on its own."""
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        raise ValueError(f"tokenizer: expected a tokenizer with .decode, got {type(tokenizer).__name__}")
    return [tokenizer.decode([int(i)]) for i in ids.reshape(-1)]
