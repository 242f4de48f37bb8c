"""The queries, keys and values every attention call of a model sees, readable and writable.

Hugging Face decoder blocks of every supported family compute their queries, keys (after any
rotary embedding and QK-norm) and values, then hand them to one attention function looked up by
name (`ALL_ATTENTION_FUNCTIONS`, "eager", "sdpa", ...; "eager" falls back to the modelling file's
own). An `AttentionTap` puts a wrapper under that name for as long as it is open: each call is
recorded per block (`AttentionCall`) and, where an `edit` is given, its queries, keys or values are
replaced before the real function runs. Keys and values are per key/value head ([batch, kv heads,
positions, d_head]); queries per query head.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .models import AdapterError, LensModel
from .structure import block_parts


@dataclass
class AttentionCall:
    """One block's attention inputs as the model ran them: q [B, H, T, dh], k / v [B, KV, T, dh], the
    additive or boolean mask (None: causal), the score scale, the tanh soft-cap (None: none), the
    weights the model returned (eager; None otherwise) and the output [B, T, H, dh]."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None
    scaling: float
    softcap: float | None
    weights: torch.Tensor | None
    out: torch.Tensor


def _attention_functions():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    return ALL_ATTENTION_FUNCTIONS


class AttentionTap:
    """Context over a LensModel: `calls[layer]` holds the last AttentionCall of each block; `edit(layer,
    q, k, v) -> (q, k, v)` (optional) rewrites them first. keep=False records nothing (edits only)."""

    def __init__(self, lm: LensModel, edit=None, *, keep: bool = True):
        self.lm, self.edit, self.keep = lm, edit, keep
        self.layer_of = {id(p.attn): i for i, p in enumerate(block_parts(lm, heads=False, neurons=False))}
        self.calls: dict[int, AttentionCall] = {}
        self._saved: dict[str, object] = {}

    def _wrap(self, name: str, original):
        def attention(module, query, key, value, attention_mask, *args, **kwargs):
            layer = self.layer_of.get(id(module))
            if layer is None:
                raise AdapterError(f"attention tap: {type(module).__name__} is not the attention of any block")
            if self.edit is not None:
                query, key, value = self.edit(layer, query, key, value)
            fn = original or getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            if fn is None:
                raise AdapterError(f"attention tap: {type(module).__module__} has no eager_attention_forward")
            out, weights = fn(module, query, key, value, attention_mask, *args, **kwargs)
            if self.keep:
                scaling = kwargs.get("scaling")
                self.calls[layer] = AttentionCall(query, key, value, attention_mask,
                                                  float(query.shape[-1] ** -0.5 if scaling is None else scaling),
                                                  kwargs.get("softcap"), weights, out)
            return out, weights
        return attention

    def __enter__(self):
        functions = _attention_functions()
        names = {getattr(getattr(m, "config", None), "_attn_implementation", None) or "eager"
                 for m in (p.attn for p in block_parts(self.lm, heads=False, neurons=False))}
        for name in names:
            self._saved[name] = functions._local_mapping.get(name)
            original = functions.get(name) if name != "eager" or "eager" in functions else None
            functions[name] = self._wrap(name, original)
        return self

    def __exit__(self, *exc):
        functions = _attention_functions()
        for name, old in self._saved.items():
            if old is None:
                functions._local_mapping.pop(name, None)
            else:
                functions[name] = old
        self._saved.clear()
        return False


def additive_mask(call: AttentionCall, dtype=torch.float64) -> torch.Tensor:
    """The call's mask as an additive [B or 1, 1, T, Tk] tensor (−inf where a key is hidden)."""
    q, k, mask = call.q, call.k, call.mask
    if mask is None:
        t, tk = q.shape[-2], k.shape[-2]
        keep = torch.ones(t, tk, dtype=torch.bool, device=q.device).tril(tk - t)
        return torch.zeros(1, 1, t, tk, dtype=dtype, device=q.device).masked_fill(~keep, -torch.inf)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -torch.inf)
    mask = mask.to(dtype)
    return mask.masked_fill(mask <= torch.finfo(call.mask.dtype).min / 2, -torch.inf)[..., :k.shape[-2]]


def scores(call: AttentionCall, q: torch.Tensor | None = None, k: torch.Tensor | None = None) -> torch.Tensor:
    """float64 scores [B, H, T, Tk] before the mask: q·k·scale, soft-capped where the model caps (q, k:
    other queries or keys in the call's layout, default the call's own)."""
    q = (call.q if q is None else q).double()
    k = (call.k if k is None else k).double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = q @ k.transpose(-1, -2) * call.scaling
    if call.softcap is not None:
        s = torch.tanh(s / call.softcap) * call.softcap
    return s
