"""Where each decoder block keeps its parts, for every supported family: the one place that knows.

A block adds two things to the residual: its attention output and its MLP output, each *as added*,
that is after a post-norm where the family has one (Gemma 2 and 3). The attention output is the
output projection applied to the heads' concatenated values (`attn_out`, read one d_head slice per
query head, grouped-query or not); the MLP output is the down projection applied to the neurons'
activations (`mlp_down`). The mid-layer residual (between attention and MLP) is the input of the
MLP's pre-norm. Values come out of a plain or a fused projection (`VALUE_PARTS`), one vector per
key/value head, repeated to the query heads that share it.

Capture (core.capture, core.components), the analyses and the interventions read the parts from
here; a layout the tables miss is named by hand with parts={"attn_out": "self_attn.o_proj", ...}.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import AdapterError, LensModel, get_module

# Dotted paths inside a decoder block, tried in order (Llama/Mistral/Qwen2/Gemma/Phi-3, GPT-2,
# GPT-NeoX, OPT). "mlp" is the module whose output is the MLP's contribution (OPT has no MLP
# module: its fc2 is); "attn_out" / "mlp_down" are the projections whose inputs are the heads'
# concatenated values and the neurons' activations.
BLOCK_PARTS = {
    "attn": ("self_attn", "attn", "attention"),
    "attn_out": ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attn.out_proj"),
    "mlp": ("mlp", "fc2"),
    "mlp_down": ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "fc2"),
}
# Where each family's value vectors come out, and how to cut them from that output [..., width]
# into [..., kv heads, d_head]: a plain value projection, or the value part of a fused projection.
VALUE_PARTS = (("self_attn.v_proj", "plain"), ("attn.c_attn", "gpt2"), ("attention.query_key_value", "neox"),
               ("self_attn.qkv_proj", "phi3"))
# Gemma 2 and 3 normalise each sub-layer's output before adding it: (attention, MLP) post-norms.
POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")
# Norms that take the mid-layer residual as input (the MLP's pre-norm), in preference order;
# Gemma's post_attention_layernorm normalises the attention output instead, so its
# pre_feedforward_layernorm comes first.
MID_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "final_layer_norm")
HEAD_COUNT_ATTRS = ("num_attention_heads", "n_head", "num_heads")


def first_tensor(x) -> torch.Tensor:
    """A module's hidden state: its output itself, or the first member of the tuple it returns."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    raise TypeError(f"cannot find the hidden state in a {type(x).__name__}")


def with_first(out, new: torch.Tensor):
    """A module's output with its hidden state replaced (tuples keep their other members)."""
    if isinstance(out, torch.Tensor):
        return new.reshape(out.shape)
    first = out[0]
    return (new.reshape(first.shape), *out[1:])


def mid_norm_name(block: nn.Module) -> str:
    """The attribute of an HF decoder block whose input is the mid-layer residual (its pre-MLP norm)."""
    if getattr(getattr(block, "config", None), "use_parallel_residual", False) or getattr(block, "use_parallel_residual", False):
        raise ValueError(f"{type(block).__name__} runs attention and MLP in parallel: there is no mid-layer residual")
    # Post-LN blocks (OPT-350m) normalise after the sum: their final_layer_norm's input is not the mid residual.
    if getattr(block, "do_layer_norm_before", True) is False:
        raise ValueError(f"{type(block).__name__} is post-LN (do_layer_norm_before=False): no pre-MLP norm to hook")
    for name in MID_NORMS:
        if isinstance(getattr(block, name, None), nn.Module):
            return name
    raise ValueError(f"{type(block).__name__}: no mid-layer site (looked for {', '.join(MID_NORMS)})")


def mid_norm(block: nn.Module) -> nn.Module:
    return getattr(block, mid_norm_name(block))


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D"  # GPT-2's projection: weight [in, out]


def projection_weight(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [in, out], bias [out] or None) of an nn.Linear or a GPT-2 Conv1D."""
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise AdapterError(f"{type(m).__name__}: expected a projection with a 2-D weight")
    w = w.detach() if _is_conv1d(m) else w.detach().T
    b = getattr(m, "bias", None)
    return w, (b.detach() if isinstance(b, torch.Tensor) else None)


@dataclass
class BlockParts:
    attn: nn.Module
    attn_out: nn.Module | None  # found only where heads are wanted
    mlp: nn.Module
    mlp_down: nn.Module | None  # found only where neurons are wanted
    attn_post_norm: nn.Module | None
    mlp_post_norm: nn.Module | None

    def added(self, kind: str) -> nn.Module:
        """The module whose output is the attention's ("attn") or the MLP's ("mlp") contribution as added
        to the residual: the post-norm where there is one."""
        post = self.attn_post_norm if kind == "attn" else self.mlp_post_norm
        return post if post is not None else (self.attn if kind == "attn" else self.mlp)


def _find(block: nn.Module, part: str, override: str | None, layer: int) -> nn.Module:
    paths = (override,) if override else BLOCK_PARTS[part]
    for path in paths:
        try:
            return get_module(block, path)
        except AdapterError:
            continue
    raise AdapterError(f"block {layer} ({type(block).__name__}): no {part} module (tried {', '.join(paths)}); "
                       f"name it with parts={{'{part}': 'dotted.path'}}")


def block_parts(lm: LensModel, parts: dict | None = None, *, heads: bool = True,
                neurons: bool = True) -> list[BlockParts]:
    """Each decoder block's attention, MLP and (where heads / neurons are wanted) their output projections;
    an AdapterError names the block and the part that is missing. parts: dotted paths named by hand, over
    those the model was given (`LensModel.parts`)."""
    parts = {**(lm.parts or {}), **(parts or {})}
    unknown = set(parts) - set(BLOCK_PARTS)
    if unknown:
        raise ValueError(f"parts: unknown part(s) {sorted(unknown)}; expected some of {sorted(BLOCK_PARTS)}")
    if lm.hook_points is not None:
        raise AdapterError("component capture needs the HF modules; a TransformerLens model is not supported yet")
    out = []
    for i, block in enumerate(lm.layers):
        wanted = {"attn": True, "mlp": True, "attn_out": heads, "mlp_down": neurons}
        found = {p: _find(block, p, parts.get(p), i) if wanted[p] else None for p in BLOCK_PARTS}
        post = [getattr(block, n, None) for n in POST_NORMS] if isinstance(
            getattr(block, POST_NORMS[1], None), nn.Module) else [None, None]
        out.append(BlockParts(**found, attn_post_norm=post[0], mlp_post_norm=post[1]))
    return out


def value_projection(lm: LensModel, layer: int) -> tuple[nn.Module, str]:
    """Block `layer`'s module whose output holds the value vectors, and its layout (VALUE_PARTS)."""
    block = lm.layers[layer]
    for path, kind in VALUE_PARTS:
        try:
            return get_module(block, path), kind
        except AdapterError:
            continue
    raise AdapterError(f"block {layer} ({type(block).__name__}): no value projection (tried "
                       f"{', '.join(p for p, _ in VALUE_PARTS)}) for the per-source decomposition")


def value_heads(kind: str, out: torch.Tensor, n_heads: int, n_kv: int, d_head: int) -> torch.Tensor:
    """The value vectors [..., kv heads, d_head] inside a projection's output (VALUE_PARTS)."""
    lead = out.shape[:-1]
    if kind == "plain":
        v = out
    elif kind == "gpt2":  # [q | k | v], each n_heads * d_head
        v = out[..., 2 * n_heads * d_head:]
    elif kind == "neox":  # per head [q | k | v]
        return out.reshape(*lead, n_heads, 3 * d_head)[..., 2 * d_head:]
    elif kind == "phi3":  # [q (n_heads) | k (n_kv) | v (n_kv)]
        v = out[..., (n_heads + n_kv) * d_head:]
    else:
        raise ValueError(f"unknown value layout {kind!r}")
    return v.reshape(*lead, n_kv, d_head)


def n_heads(lm: LensModel) -> int:
    """Query heads per block, from the model's config."""
    config = getattr(lm.model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in HEAD_COUNT_ATTRS:
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    raise AdapterError(f"no head count in the config (looked for {', '.join(HEAD_COUNT_ATTRS)})")


def n_kv_heads(lm: LensModel, n_heads_: int) -> int:
    """Key/value heads per block (grouped-query attention), n_heads_ where the config names none."""
    config = getattr(lm.model, "config", None)
    v = getattr(config, "num_key_value_heads", None)
    return v if isinstance(v, int) and v > 0 else n_heads_
