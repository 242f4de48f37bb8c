"""What every report shares: matplotlib without a display, JSON files, tokens as display strings."""
from __future__ import annotations

import json
import os

import torch


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def token_strings(tokenizer, ids: torch.Tensor) -> list[str]:
    """The text of each token id on its own."""
    if tokenizer is None or not hasattr(tokenizer, "decode"):
        raise ValueError(f"tokenizer: expected a tokenizer with .decode, got {type(tokenizer).__name__}")
    return [tokenizer.decode([int(i)]) for i in ids.reshape(-1)]
