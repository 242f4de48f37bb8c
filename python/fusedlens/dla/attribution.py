"""Direct logit attribution: each component's exact share of the final logits (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits").

With the final norm's scale frozen at the forward's value (its centring, for LayerNorm, is
linear), norm(z^L) = gain ⊙ centre(z^L) + β and z^L is the sum of the components, so the
raw logit of token w (before any soft-cap) is

    logit_w = Σ_c (gain ⊙ centre(c)) · W_U[w] + (β · W_U[w] + b_w)

term by term: component c's direct effect on w is c · ρ_w with the read-out direction
ρ_w = centre(gain ⊙ W_U[w]), and "bias" is the last term. A neuron reaches the residual
through its block's frozen post-norm P (Gemma 2 and 3), so its effect is act_j · (W_down[j] · Pᵀρ_w), and a
head's is z_h · (W_O^h Pᵀρ_w): neither needs the per-head or per-neuron vectors.
"""
from __future__ import annotations

import re

import torch

from ..core.components import Components, Frozen

KINDS = ("embed", "attn", "mlp", "head", "neuron")
_NAME = re.compile(r"^(embed|bias|attn|mlp|attn_bias|mlp_bias|head|neuron)(?:\.(\d+))?(?:\.(\d+))?$")


def component_names(n_layers: int, n_heads: int | None, d_ff: list[int] | None) -> list[str]:
    """Every component, in the order of the result's rows: embed, attn.i / mlp.i, bias, then the heads
    with their blocks' projection biases, then the neurons with theirs (when captured)."""
    names = ["embed"] + [f"{kind}.{i}" for i in range(n_layers) for kind in ("attn", "mlp")] + ["bias"]
    if n_heads:
        names += [f"head.{i}.{h}" for i in range(n_layers) for h in range(n_heads)]
        names += [f"attn_bias.{i}" for i in range(n_layers)]
    if d_ff:
        names += [f"neuron.{i}.{j}" for i in range(n_layers) for j in range(d_ff[i])]
        names += [f"mlp_bias.{i}" for i in range(n_layers)]
    return names


def check_component(name: str, n_layers: int, n_heads: int | None, d_ff: list[int] | None) -> str:
    """A component name, validated: unknown kinds and out-of-range layers, heads or neurons are errors."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"component: unknown {name!r}; expected embed, bias, attn.i, mlp.i, head.i.h, neuron.i.j, "
                         f"attn_bias.i or mlp_bias.i")
    kind, layer, index = m.group(1), m.group(2), m.group(3)
    wants = {"embed": 0, "bias": 0, "attn": 1, "mlp": 1, "attn_bias": 1, "mlp_bias": 1, "head": 2, "neuron": 2}[kind]
    if (layer is not None) + (index is not None) != wants:
        raise ValueError(f"component: {name!r} needs {wants} index(es) after {kind!r}")
    if layer is not None and not int(layer) < n_layers:
        raise ValueError(f"component: {name!r}: layer {layer} out of range [0, {n_layers})")
    if kind == "head":
        if not n_heads:
            raise ValueError(f"component: {name!r}: heads were not captured (components=... needs 'head')")
        if not int(index) < n_heads:
            raise ValueError(f"component: {name!r}: head {index} out of range [0, {n_heads})")
    if kind == "neuron":
        if not d_ff:
            raise ValueError(f"component: {name!r}: neurons were not captured (components=... needs 'neuron')")
        if not int(index) < d_ff[int(layer)]:
            raise ValueError(f"component: {name!r}: neuron {index} out of range [0, {d_ff[int(layer)]})")
    return name


def readout_directions(final_norm: Frozen, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """ρ [rows, d]: row t's read-out direction centre(gain_t ⊙ W_U[ids_t]) (ids < 0: zeros)."""
    w = weight[ids.clamp(min=0)].to(final_norm.gain.dtype) * final_norm.gain
    if final_norm.centred:
        w = w - w.mean(-1, keepdim=True)
    return w * (ids >= 0)[:, None]


def bias_terms(lm, ids: torch.Tensor, dtype) -> torch.Tensor:
    """β · W_U[w] + b_w per row (ids < 0: 0): the part of the logit no component writes."""
    out = torch.zeros(ids.shape, dtype=dtype, device=ids.device)
    safe = ids.clamp(min=0)
    if lm.norm.bias is not None:
        out += lm.unembed.weight[safe].to(dtype) @ lm.norm.bias.to(dtype)
    if lm.unembed.bias is not None:
        out += lm.unembed.bias[safe].to(dtype)
    return out * (ids >= 0)


def contributions(comp: Components, final_norm: Frozen, lm, ids: torch.Tensor) -> torch.Tensor:
    """Direct effect of every component (component_names order) on token ids[t] at each row t: [C, rows]."""
    rho = readout_directions(final_norm, lm.unembed.weight, ids)
    parts = [(comp.embed * rho).sum(-1)[None],
             (torch.stack([comp.attn, comp.mlp], 1).flatten(0, 1) * rho).sum(-1),
             bias_terms(lm, ids, rho.dtype)[None]]
    if comp.head_z is not None:
        parts += [comp.head_effects(rho).flatten(0, 1), (comp.attn_bias * rho).sum(-1)]
    if comp.neuron_acts is not None:
        parts += [comp.neuron_effects(rho).flatten(0, 1), (comp.mlp_bias * rho).sum(-1)]
    return torch.cat(parts)


def component_rows(comp: Components, final_norm: Frozen) -> tuple[list[str], torch.Tensor]:
    """The vectors whose dot with W_U[w] is each component's direct effect on w: F(c) = gain ⊙ centre(c),
    for embed, attn.i, mlp.i and every head (not the biases or neurons) → (names, [C', rows, d])."""
    L = comp.attn.shape[0]
    names = ["embed"] + [f"{kind}.{i}" for i in range(L) for kind in ("attn", "mlp")]
    vecs = [comp.embed[None], torch.stack([comp.attn, comp.mlp], 1).flatten(0, 1)]
    if comp.head_z is not None:
        names += [f"head.{i}.{h}" for i in range(L) for h in range(comp.n_heads)]
        vecs.append(comp.heads().flatten(0, 1))
    return names, final_norm(torch.cat(vecs))
