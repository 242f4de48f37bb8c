"""AtP*'s fix for query and key nodes (Kramár, Lieberum, Shah, Nanda 2024): recompute the attention
softmax exactly for the patched query or key, and linearise only after the head's output.

A linear estimate through a saturated softmax sees a near-zero gradient and misses patches that move
the attention a lot. Here the change of the head's output z_t is exact, and the metric change is
g_t · Δz_t with g_t = ∂metric/∂z_t. For a query at position t the new row is one softmax. For a key
at position s, every query t ≥ s sees one score moved by δ_ts; its new row is the old one rescaled,
p'_s = A_ts e^δ / (1 − A_ts + A_ts e^δ) and p'_j = c A_tj (j ≠ s, c = (1 − p'_s) / (1 − A_ts)), so
Δz_t = (c − 1)(z_t − A_ts v_s) + (p'_s − A_ts) v_s for all (t, s) at once, in log space (float64).
"""
from __future__ import annotations

import torch

from ..core.attention_tap import AttentionCall, additive_mask, scores


def _heads(call: AttentionCall, grad_z: torch.Tensor):
    """(values repeated to the query heads [B, H, T, dh], g [B, H, T, dh]) in float64."""
    h = call.q.shape[1]
    v = call.v.double().repeat_interleave(h // call.v.shape[1], dim=1)
    return v, grad_z.double().reshape(*grad_z.shape[:2], h, -1).transpose(1, 2)


def query_fix(call: AttentionCall, q_clean: torch.Tensor, grad_z: torch.Tensor) -> torch.Tensor:
    """[B, H, T]: g_t · Δz_t with the clean query [B, H, T, dh] at (head, t). grad_z: [B, T, H·dh]."""
    v, g = _heads(call, grad_z)
    mask = additive_mask(call)
    a = torch.softmax(scores(call) + mask, -1)
    a_new = torch.softmax(scores(call, q=q_clean) + mask, -1)
    return (((a_new - a) @ v) * g).sum(-1)


def key_fix(call: AttentionCall, k_clean: torch.Tensor, grad_z: torch.Tensor) -> torch.Tensor:
    """[B, KV, T]: Σ over the group's heads and the queries t of g_t · Δz_t with the clean key [B, KV,
    T, dh] at (kv head, s). grad_z: [B, T, H·dh]."""
    v, g = _heads(call, grad_z)
    s = scores(call)
    logit = s + additive_mask(call)
    delta = scores(call, k=k_clean) - s
    log_a = torch.log_softmax(logit, -1)
    a = log_a.exp()
    log_rest = torch.log1p(-a.clamp(max=1.0))
    moved = log_a + delta
    norm = torch.logaddexp(log_rest, moved)
    p_new, c = (moved - norm).exp(), (-norm).exp()
    gv = g @ v.transpose(-1, -2)  # [B, H, T, Tk]: g_t · v_s
    gz = (g * (a @ v)).sum(-1, keepdim=True)  # [B, H, T, 1]: g_t · z_t
    change = (c - 1) * (gz - a * gv) + (p_new - a) * gv
    change = torch.where(torch.isfinite(logit), change, torch.zeros((), dtype=change.dtype))
    b, h, _, tk = change.shape
    return change.sum(2).reshape(b, call.k.shape[1], h // call.k.shape[1], tk).sum(2)
