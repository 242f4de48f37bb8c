"""Residual capture: hand each layer's residual to consumers as the forward runs.

Sites, in stream order: `embed` (the input of the first block, i.e. the embedding
output after any scaling the model applies), `mid.i` (the residual between block
i's attention and its MLP, where the block has one) and `resid.i` (block i's
output). Only positions where the attention mask is 1 are handed out, flattened
to rows, so padding never reaches a statistic. A LensModel of another tool's model
(`hook_points`, `run_forward`: TransformerLens) is hooked at its own hook points;
`residuals_from_tensors` turns tensors another tool saved into the same `Residuals`.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .checks import IGNORE_INDEX, check_ids, check_same_width, check_tensor
from .models import LensModel
from .structure import first_tensor, mid_norm


class _StopForward(Exception):
    pass


def with_bos(input_ids: torch.Tensor, mask: torch.Tensor, bos_id: int | None):
    """(ids, mask) the model is run on, and the mask of the given tokens among them: with bos_id, one
    column in front holding BOS for every row whose first real token is not BOS (a masked pad for
    the others). Without, the batch as given."""
    if bos_id is None:
        return input_ids, mask, mask
    first = input_ids.gather(1, mask.long().argmax(1, keepdim=True))[:, 0]
    needs = (first != bos_id) & mask.any(1)
    if not bool(needs.any()):
        return input_ids, mask, mask
    column = torch.full_like(input_ids[:, :1], bos_id)
    return (torch.cat([column, input_ids], 1), torch.cat([needs[:, None], mask], 1),
            torch.cat([torch.zeros_like(needs[:, None]), mask], 1))


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token within its own sequence: padding before it does not count."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _accepts_position_ids(model: nn.Module) -> bool:
    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def next_token_targets(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """targets[b, t] = input_ids[b, t+1] where that position is real, else IGNORE_INDEX."""
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    targets[:, :-1] = torch.where(mask[:, 1:], input_ids[:, 1:], IGNORE_INDEX)
    return targets


@dataclass
class Residuals:
    """Captured residuals of the real (unpadded) positions of a batch.

    hidden: [sites, rows, d_model], rows in batch-major order; the last site is
    the final block's output (pre-norm). batch_index / position locate each row;
    targets are the next token ids (IGNORE_INDEX at each sequence's last token).
    """

    sites: list[str]
    hidden: torch.Tensor
    input_ids: torch.Tensor
    targets: torch.Tensor
    batch_index: torch.Tensor
    position: torch.Tensor


def check_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """Block indices, negatives counted from the end, each in [-n_layers, n_layers) → sorted distinct
    indices in [0, n_layers). Anything out of range is an error, never wrapped around."""
    given = [int(i) for i in layers]
    bad = [i for i in given if not -n_layers <= i < n_layers]
    if not given or bad:
        raise ValueError(f"layers: expected block indices in [-{n_layers}, {n_layers}) (the model has {n_layers} "
                         f"blocks), got {given}")
    return sorted({i % n_layers for i in given})


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """The command-line form: "all", "a-b" (inclusive; negatives count from the end) or "i,j,k" → block indices."""
    spec = str(spec).strip()
    try:
        if spec == "all":
            return list(range(n_layers))
        if "-" in spec[1:] and "," not in spec:
            a, b = spec[0] + spec[1:].split("-", 1)[0], spec[1:].split("-", 1)[1]
            lo, hi = (check_layers([int(x)], n_layers)[0] for x in (a, b))
            if lo > hi:
                raise ValueError(f"layers: {spec!r} selects no layer")
            return list(range(lo, hi + 1))
        return check_layers([int(x) for x in spec.split(",")], n_layers)
    except ValueError as err:
        if str(err).startswith("layers:"):
            raise
        raise ValueError(f"layers: expected 'all', 'a-b' or 'i,j,k', got {spec!r}") from None


class ResidualCapture:
    """Forward hooks on a LensModel; use `run`, or enter the context and call the model yourself.

    layers: block indices to capture (default all); embed / mid: also capture those
    sites; consumer(site, rows): called as each site is computed; keep: store rows
    for `Residuals`. The forward stops after the last captured block unless
    `full_forward` (the final norm and unembedding are not needed by a lens).
    """

    def __init__(self, lm: LensModel, *, layers: Sequence[int] | None = None, embed: bool = True, mid: bool = False,
                 consumer: Callable[[str, torch.Tensor], None] | None = None, keep: bool = True,
                 full_forward: bool = False):
        layers = list(range(lm.n_layers)) if layers is None else check_layers(layers, lm.n_layers)
        self.lm, self.layers, self.embed, self.mid = lm, layers, embed, mid
        self.consumer, self.keep, self.full_forward = consumer, keep, full_forward
        self.sites = (["embed"] if embed else []) + [s for i in layers for s in ((f"mid.{i}",) if mid else ()) + (f"resid.{i}",)]
        self._handles: list = []
        self._mask: torch.Tensor | None = None
        self.forward_mask: torch.Tensor | None = None
        self.store: dict[str, torch.Tensor] = {}
        self.emit_seconds = 0.0  # time spent handing rows out (and in consumers), for throughput reports

    def _emit(self, site: str, h: torch.Tensor) -> None:
        t0 = time.perf_counter()
        try:
            self._emit_rows(site, h)
        finally:
            self.emit_seconds += time.perf_counter() - t0

    def _emit_rows(self, site: str, h: torch.Tensor) -> None:
        h = h.detach()
        if self._mask is None:
            rows = h.flatten(0, -2)
        else:
            if h.shape[:-1] != self._mask.shape:
                # Some blocks flatten [batch, seq] before the MLP (OPT's final_layer_norm sees [batch*seq, d]).
                if h.shape[:-1].numel() != self._mask.numel():
                    raise RuntimeError(f"{site}: hidden state of shape {tuple(h.shape)} does not match the batch "
                                       f"{tuple(self._mask.shape)}")
                h = h.reshape(*self._mask.shape, h.shape[-1])
            rows = h[self._mask]
        if self.consumer is not None:
            self.consumer(site, rows)
        if self.keep:
            self.store[site] = rows

    def _stop_after(self, site: str) -> None:
        if site == f"resid.{self.layers[-1]}" and not self.full_forward:
            raise _StopForward

    def _enter_hook_points(self):
        """Another tool's hook points (LensModel.hook_points): each module's output is its site's residual."""
        points = self.lm.hook_points
        missing = [s for s in self.sites if s not in points]
        if missing:
            raise ValueError(f"{type(self.lm.model).__name__} has no hook point for site(s) {', '.join(missing)}"
                             + (" (no mid-layer residual: attention and MLP in parallel, or no MLP)"
                                if any(s.startswith("mid.") for s in missing) else ""))
        for site in self.sites:
            def hook(_m, _args, out, site=site):
                self._emit(site, first_tensor(out))
                self._stop_after(site)
            self._handles.append(points[site].register_forward_hook(hook))
        return self

    def __enter__(self):
        if self.lm.hook_points is not None:
            return self._enter_hook_points()
        blocks = self.lm.layers
        if self.embed:
            def embed_hook(_m, args, kwargs):
                self._emit("embed", args[0] if args else kwargs["hidden_states"])
            self._handles.append(blocks[0].register_forward_pre_hook(embed_hook, with_kwargs=True))
        for i in self.layers:
            if self.mid:
                def mid_hook(_m, args, i=i):
                    self._emit(f"mid.{i}", args[0])
                self._handles.append(mid_norm(blocks[i]).register_forward_pre_hook(mid_hook))

            def out_hook(_m, _args, out, i=i):
                self._emit(f"resid.{i}", first_tensor(out))
                self._stop_after(f"resid.{i}")
            self._handles.append(blocks[i].register_forward_hook(out_hook))
        return self

    def __exit__(self, exc_type, exc, tb):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return exc_type is _StopForward  # swallow the early stop

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Residuals:
        """Forward one batch [batch, seq] and return its captured residuals.

        A model whose tokenizer begins every text with BOS (`LensModel.bos_id`: Gemma) reads each row
        that does not begin with it behind one, as it was trained to; the BOS row is not captured, so
        the residuals are those of the given tokens, in the model's own context."""
        input_ids, mask = check_batch(input_ids, attention_mask, self.lm.vocab_size)
        device = self.lm.device
        ids_in, mask_in, emit = with_bos(input_ids, mask, self.lm.bos_id)
        # With left padding, models with absolute positions (GPT-2) would count the pads; give each
        # sequence its own positions so a padded row equals the same sequence run alone.
        positions = positions_from_mask(mask_in)
        shifted = bool((positions != torch.arange(mask_in.shape[1], device=mask.device))[mask_in].any())
        self._mask, self.store = emit.to(device), {}
        self.forward_mask = emit  # the forward's columns that hold the rows (components read the same)
        try:
            with self:
                if self.lm.run_forward is not None:
                    self.lm.run_forward(ids_in.to(device), mask_in.long().to(device),
                                        positions.to(device) if shifted else None)
                else:
                    kwargs = dict(input_ids=ids_in.to(device), attention_mask=mask_in.long().to(device),
                                  use_cache=False)
                    if shifted and _accepts_position_ids(self.lm.model):
                        kwargs["position_ids"] = positions.to(device)
                    self.lm.model(**kwargs)
        finally:
            self._mask = None
        if self.keep and self.store.keys() != set(self.sites):
            missing = ", ".join(s for s in self.sites if s not in self.store)
            raise RuntimeError(f"the forward never reached site(s) {missing}")
        hidden = torch.stack([self.store[s] for s in self.sites]) if self.keep else torch.empty(0)
        return _residuals(list(self.sites), hidden, input_ids, mask)


def check_batch(input_ids, attention_mask, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [batch, seq] (or [seq]) and a 0/1 attention mask (None: all real) → ids, boolean mask."""
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
        input_ids = input_ids[None]
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
    input_ids = check_ids("input_ids", input_ids, vocab_size, allow_ignore=False)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected [batch, seq], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask: expected a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: shape {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask: expected only 0 (padding) and 1 (real token)")
    mask = attention_mask.bool()
    if not bool(mask.any()):
        raise ValueError("attention_mask: no real token in the batch")
    return input_ids, mask


def _residuals(sites: list[str], hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> Residuals:
    mask = mask.to(input_ids.device)
    batch_index, position = mask.nonzero(as_tuple=True)
    return Residuals(sites=sites, hidden=hidden, input_ids=input_ids[mask],
                     targets=next_token_targets(input_ids, mask)[mask], batch_index=batch_index, position=position)


def residuals_from_tensors(sites: Sequence[str], tensors: Sequence, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None, vocab_size: int | None = None) -> Residuals:
    """Residuals another tool saved (a TransformerLens cache, nnsight `.save()`s) as capture's `Residuals`.

    tensors: one [batch, seq, d_model] per site ([batch * seq, d_model] too), in stream order, the
    final block's output last (a tuple or list whose first element is the hidden state, as HF
    blocks return, is accepted); input_ids / attention_mask: the batch they were computed on (ids checked
    against vocab_size where given). Only the real positions are kept (detached), rows in
    batch-major order, with next-token targets.
    """
    sites, tensors = list(sites), [first_tensor(t) if isinstance(t, (tuple, list)) else t for t in tensors]
    if not sites or len(sites) != len(tensors):
        raise ValueError(f"sites, tensors: expected one tensor per site, got {len(sites)} sites and "
                         f"{len(tensors)} tensors")
    input_ids, mask = check_batch(input_ids, attention_mask, vocab_size or torch.iinfo(torch.int64).max)
    for site, t in zip(sites, tensors):
        check_tensor(site, t, ndim=(2, 3), floating=True, finite=False)
        if t.shape[:-1].numel() != mask.numel():  # [batch, seq, d]; [batch * seq, d] as OPT's MLP norm sees it
            raise ValueError(f"{site}: shape {tuple(t.shape)} does not match input_ids {tuple(mask.shape)} (+ d_model)")
        check_same_width(site, t, tensors[0].shape[-1], f"{sites[0]}'s d_model")
    rows = [t.detach().reshape(*mask.shape, t.shape[-1])[mask.to(t.device)] for t in tensors]
    return _residuals(sites, torch.stack(rows), input_ids, mask)


def capture_residuals(lm: LensModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      **kwargs) -> Residuals:
    """One-call form of ResidualCapture(lm, **kwargs).run(input_ids, attention_mask)."""
    return ResidualCapture(lm, **kwargs).run(input_ids, attention_mask)
