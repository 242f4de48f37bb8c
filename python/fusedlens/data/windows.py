"""Token ids in memory → the sequences a forward takes: the one place that cuts, packs and pads.

`corpus_ids` turns text (default: the pydoc corpus) or ids into one 1-D id tensor;
`windows` cuts it into sequences (overlap=1: every token but the last gets its next
token as target, as probes need; overlap=0: plain cuts); `TokenStream` hands out
consecutive blocks, wrapping around (tuned-lens training); `split_tail` holds out the
end; `batched` groups any iterable; `pad_right` makes the [B, T] ids and mask of a
batch of sequences. Corpora on disk are packed by `data.corpus.iter_sequences`.
"""
from __future__ import annotations

import functools
from typing import Iterable, Iterator, TypeVar

import torch

from .pydoc import pydoc_text

T = TypeVar("T")


@functools.lru_cache(maxsize=2)
def _pydoc_ids(tokenizer) -> torch.Tensor:
    # tokenising the ~600 KB corpus takes seconds; training and evaluation both want it
    return tokenize(tokenizer, pydoc_text())


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """text → 1-D token ids, no special tokens."""
    if tokenizer is None:
        raise ValueError("corpus: text needs a model with a tokenizer; pass token ids instead")
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]


def corpus_ids(tokenizer, corpus=None, n_tokens: int | None = None) -> torch.Tensor:
    """The first n_tokens ids (all if None) of `corpus`: text, a 1-D integer tensor of ids, or None
    for the pydoc corpus. Fewer than n_tokens, or none at all, is an error."""
    if corpus is None:
        ids = _pydoc_ids(tokenizer)
    elif isinstance(corpus, str):
        ids = tokenize(tokenizer, corpus)
    elif isinstance(corpus, torch.Tensor) and corpus.dim() == 1 and not corpus.is_floating_point():
        ids = corpus.long()
    else:
        raise ValueError("corpus: expected text or a 1-D integer tensor of token ids")
    if ids.numel() == 0:
        raise ValueError("corpus: the corpus is empty")
    if n_tokens is not None:
        if ids.numel() < n_tokens:
            raise ValueError(f"corpus: {ids.numel()} tokens, need {n_tokens}")
        ids = ids[:n_tokens]
    return ids


def windows(ids: torch.Tensor, seq_len: int, overlap: int = 0) -> list[torch.Tensor]:
    """Consecutive views of at most seq_len + overlap ids, each starting seq_len after the last.
    overlap=1 repeats each window's last id as the next one's first, so that every id but the
    very last has its successor in the same window (a target for a next-token statistic)."""
    if seq_len < 1 or overlap not in (0, 1):
        raise ValueError(f"seq_len >= 1 and overlap 0 or 1 expected, got {seq_len}, {overlap}")
    return [ids[i:i + seq_len + overlap] for i in range(0, ids.numel() - overlap, seq_len)]


def split_tail(ids: torch.Tensor, n_tail: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(head, tail): the last n_tail ids held out, never seen with the head."""
    if not 0 < n_tail < ids.numel():
        raise ValueError(f"eval_tokens: expected in (0, {ids.numel()}), got {n_tail}")
    return ids[:-n_tail], ids[-n_tail:]


class TokenStream:
    """Consecutive [batch, seq_len] blocks of a 1-D id tensor, wrapping around at its end;
    `position` says where the next one starts (saved in checkpoints)."""

    def __init__(self, ids: torch.Tensor, seq_len: int, position: int = 0):
        if ids.dim() != 1 or ids.numel() < 2:
            raise ValueError(f"ids: expected a 1-D tensor of at least 2 token ids, got shape {tuple(ids.shape)}")
        self.ids, self.seq_len, self.position = ids, seq_len, position % ids.numel()

    def next(self, n_tokens: int) -> torch.Tensor:
        idx = (self.position + torch.arange(n_tokens)) % self.ids.numel()
        self.position = (self.position + n_tokens) % self.ids.numel()
        return self.ids[idx].reshape(-1, min(self.seq_len, n_tokens))


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` consecutive items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pad_right(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D id sequences → ids [B, T] right-padded with 0 and the attention mask (1 = real token)."""
    width = max(s.numel() for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, :s.numel()], mask[row, :s.numel()] = s, 1
    return ids, mask
