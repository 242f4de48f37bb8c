"""Residual capture: hand each layer's residual to consumers as the forward runs.

Sites, in stream order: `embed` (the input of the first block, i.e. the embedding
output after any scaling the model applies), `mid.i` (the residual between block
i's attention and its MLP, where the block has one) and `resid.i` (block i's
output). Only positions where the attention mask is 1 are handed out, flattened
to rows, so padding never reaches a statistic.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .checks import IGNORE_INDEX, check_ids
from .models import LensModel

# Norms that take the mid-layer residual as input (the MLP's pre-norm), in
# preference order; Gemma's post_attention_layernorm normalises the attention
# output instead, so its pre_feedforward_layernorm comes first.
MID_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "final_layer_norm")


class _StopForward(Exception):
    pass


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    raise TypeError(f"cannot find the hidden state in a {type(x).__name__}")


def mid_norm(block: nn.Module) -> nn.Module:
    if getattr(getattr(block, "config", None), "use_parallel_residual", False) or getattr(block, "use_parallel_residual", False):
        raise ValueError(f"{type(block).__name__} runs attention and MLP in parallel: there is no mid-layer residual")
    # Post-LN blocks (OPT-350m) normalise after the sum: their final_layer_norm's input is not the mid residual.
    if getattr(block, "do_layer_norm_before", True) is False:
        raise ValueError(f"{type(block).__name__} is post-LN (do_layer_norm_before=False): no pre-MLP norm to hook")
    for name in MID_NORMS:
        m = getattr(block, name, None)
        if isinstance(m, nn.Module):
            return m
    raise ValueError(f"{type(block).__name__}: no mid-layer site (looked for {', '.join(MID_NORMS)})")


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

    def __enter__(self):
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
                self._emit(f"resid.{i}", _first_tensor(out))
                if i == self.layers[-1] and not self.full_forward:
                    raise _StopForward
            self._handles.append(blocks[i].register_forward_hook(out_hook))
        return self

    def __exit__(self, exc_type, exc, tb):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return exc_type is _StopForward  # swallow the early stop

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Residuals:
        """Forward one batch [batch, seq] and return its captured residuals."""
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
            input_ids = input_ids[None]
            if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 1:
                attention_mask = attention_mask[None]
        input_ids = check_ids("input_ids", input_ids, self.lm.vocab_size, allow_ignore=False)
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
        device = self.lm.device
        kwargs = dict(input_ids=input_ids.to(device), attention_mask=mask.long().to(device), use_cache=False)
        # With left padding, models with absolute positions (GPT-2) would count the pads; give each
        # sequence its own positions so a padded row equals the same sequence run alone.
        positions = positions_from_mask(mask)
        shifted = bool((positions != torch.arange(mask.shape[1], device=mask.device))[mask].any())
        if shifted and _accepts_position_ids(self.lm.model):
            kwargs["position_ids"] = positions.to(device)
        self._mask, self.store = mask.to(device), {}
        try:
            with self:
                self.lm.model(**kwargs)
        finally:
            self._mask = None
        batch_index, position = mask.nonzero(as_tuple=True)
        hidden = torch.stack([self.store[s] for s in self.sites]) if self.keep else torch.empty(0)
        return Residuals(sites=list(self.sites), hidden=hidden, input_ids=input_ids[mask],
                         targets=next_token_targets(input_ids, mask)[mask], batch_index=batch_index, position=position)


def capture_residuals(lm: LensModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      **kwargs) -> Residuals:
    """One-call form of ResidualCapture(lm, **kwargs).run(input_ids, attention_mask)."""
    return ResidualCapture(lm, **kwargs).run(input_ids, attention_mask)
