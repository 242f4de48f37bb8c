"""Inputs of every analysis that reads prompts (LogitLens.run, DLA, patching): text, lists of text or token
ids with a mask → 1-D sequences of real tokens, each cut into pieces of at most seq_len; an answer → one token."""
from __future__ import annotations

import torch

from ..core.checks import check_ids
from ..core.models import LensModel
from .windows import windows


def input_sequences(lm, inputs, attention_mask: torch.Tensor | None = None, seq_len: int = 512) -> list[torch.Tensor]:
    """Inputs (str, list of str, int ids [T] or [B, T] with a mask) → 1-D id sequences of at most seq_len."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len: expected a positive integer, got {seq_len!r}")
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)):
        if attention_mask is not None:
            raise ValueError("attention_mask: only for token-id inputs; text is masked here")
        docs = _tokenize(lm, inputs)
    elif isinstance(inputs, torch.Tensor):
        docs = _id_rows(lm, inputs, attention_mask)
    else:
        raise ValueError(f"inputs: expected a str, a list of str or an integer tensor, got {type(inputs).__name__}")
    return [w for doc in docs for w in windows(doc, seq_len)]


def _tokenize(lm, texts) -> list[torch.Tensor]:
    if not texts:
        raise ValueError("inputs: empty list of texts")
    for j, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"inputs: text {j} is a {type(text).__name__}, not a str")
        if not text.strip():
            raise ValueError(f"inputs: text {j} is empty")
    if lm.tokenizer is None:
        raise ValueError("inputs: text needs a tokenizer (LensModel.tokenizer is None); pass token ids instead")
    docs = [torch.tensor(ids, dtype=torch.long) for ids in lm.tokenizer(list(texts))["input_ids"]]
    for j, doc in enumerate(docs):
        if doc.numel() == 0:
            raise ValueError(f"inputs: text {j} gives no tokens")
        check_ids(f"inputs (tokens of text {j})", doc, lm.vocab_size, allow_ignore=False)
    return docs


def _id_rows(lm, ids: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    ids = check_ids("inputs", ids, lm.vocab_size, allow_ignore=False).cpu()
    if ids.dim() not in (1, 2):
        raise ValueError(f"inputs: expected token ids [T] or [B, T], got shape {tuple(ids.shape)}")
    if mask is None:
        return list(ids.reshape(-1, ids.shape[-1]))
    if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape:
        raise ValueError(f"attention_mask: expected a tensor of shape {tuple(ids.shape)}, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    mask = mask.cpu().reshape(-1, ids.shape[-1])
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask: expected only 0 (padding) and 1 (real token)")
    rows = []
    for b, (row, m) in enumerate(zip(ids.reshape(-1, ids.shape[-1]), mask.bool())):
        real = m.nonzero()[:, 0]
        if real.numel() == 0:
            raise ValueError(f"attention_mask: row {b} has no real token")
        if real[-1] - real[0] + 1 != real.numel():
            raise ValueError(f"attention_mask: row {b} has padding between real tokens (pad on one side only)")
        rows.append(row[real])
    return rows


def one_token(lm: LensModel, name: str, text) -> int:
    """A token id from an int or a text that is exactly one token (else a one-line error)."""
    if isinstance(text, bool):
        raise ValueError(f"{name}: expected a token (text or id), got {text!r}")
    if isinstance(text, int):
        if not 0 <= text < lm.vocab_size:
            raise ValueError(f"{name}: token id {text} out of range [0, {lm.vocab_size})")
        return text
    if not isinstance(text, str) or lm.tokenizer is None:
        raise ValueError(f"{name}: expected a token id" + ("" if lm.tokenizer is None else " or a text"))
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [lm.tokenizer.decode([i]) for i in ids]
        raise ValueError(f"{name}: {text!r} is {len(ids)} tokens {pieces}, expected exactly one")
    return int(ids[0])


def token_offsets(tokenizer, text: str, where: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: spans need a tokenizer with character offsets (a fast tokenizer): {e}") from None
    return torch.tensor(enc["input_ids"], dtype=torch.long), [tuple(o) for o in enc["offset_mapping"]]
