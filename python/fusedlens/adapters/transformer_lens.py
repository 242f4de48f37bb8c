"""TransformerLens models as a LensModel, and the residuals of a TransformerLens cache.

    lm = lens_model(model)                        # HookedTransformer (TransformerLens <= 3.x) or
                                                  # TransformerBridge (3.x, 4.x; compatibility mode or not)
    LogitLens(lm).run(...), capture_residuals(lm, ids), fusedlens.job.run_corpus(cfg, lm=lm)
    logits, cache = model.run_with_cache(ids)
    res = residuals_from_cache(cache, ids)        # hidden [sites, tokens, d_model] → ops.lens_stats(res.hidden, ...)

Nothing is imported from transformer_lens: the model's own parts are read. Sites are its hook
points: `embed` = blocks.0.hook_resid_pre, `mid.i` = blocks.i.hook_resid_mid (absent where
attention and MLP run in parallel), `resid.i` = blocks.i.hook_resid_post; the forward runs
through the model itself (`model(ids, attention_mask=..., return_type=None)`), which derives
positions from the mask. The final norm is identified numerically against `ln_final`
(LayerNorm, LayerNormPre, RMSNorm, RMSNormPre, Gemma's `1 + w`); the unembedding is `W_U`ᵀ
with `b_U` (dropped where it is all zeros), and `cfg.output_logits_soft_cap` carries over.

Build the LensModel after any weight processing: it reads the readout weights as they are then.

TransformerLens' weight processing (the defaults of HookedTransformer.from_pretrained and of
TransformerBridge.enable_compatibility_mode(); `from_pretrained_no_processing` /
`no_processing=True` turn it off), and what each option does to the statistics. All are
supported: the statistics equal those of the HF model to float32 accuracy, except as stated.

* fold_ln: norm weights (and LayerNorm biases) move into the next linear map, ln_final's into
  W_U and b_U; the norms become LayerNormPre / RMSNormPre. Same logits.
* center_writing_weights (LayerNorm models): every write to the residual stream has its mean
  over d_model removed, so each residual is the HF one minus its per-token mean, which the
  final LayerNorm removes anyway. Same lens statistics; the residuals themselves differ, so
  ridge probes (RidgeAccumulator) fit other numbers.
* center_unembed: W_U and b_U centred over the vocabulary, so each token's logits are the
  HF ones minus their mean. Log-probs, entropy, KL, ranks, top-k ids and prediction depth are
  unchanged; lse, top-k logits and the target logit (the probes' "logit" target) are those of
  the centred logits. `lm.logits_centered` says so, and a warning at construction. TransformerLens
  skips it for soft-capped models (Gemma 2), whose logits it would change.
* fold_value_biases, refactor_factored_attn_matrices: the same residuals up to rounding.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from ..core.capture import Residuals, residuals_from_tensors
from ..core.models import AdapterError, LensModel, final_norm_from_module
from ..core.readout import Unembed

KINDS = ("TransformerBridge", "HookedTransformer")
HOOKS = {"embed": "blocks.0.hook_resid_pre", "mid": "blocks.{i}.hook_resid_mid", "resid": "blocks.{i}.hook_resid_post"}
CENTRED_RTOL = 1e-4  # a vocabulary mean below this share of the mean |entry|: centred (float32 rounding is ~1e-7)


def model_kind(model) -> str:
    """'TransformerBridge' or 'HookedTransformer' (by class name, so transformer_lens need not be imported)."""
    names = {c.__name__ for c in type(model).__mro__}
    kind = next((k for k in KINDS if k in names), None)
    if kind is None or not isinstance(model, nn.Module):
        raise AdapterError(f"model: expected a TransformerLens HookedTransformer or TransformerBridge, "
                           f"got {type(model).__name__}")
    return kind


def _part(model, name: str, kind: str):
    try:
        value = getattr(model, name, None)
    except Exception:  # noqa: BLE001 - a bridge's attribute lookup can raise its own errors
        value = None
    if value is None:
        raise AdapterError(f"{kind}: no {name!r}; fusedlens needs cfg, blocks, ln_final and W_U (a decoder-only "
                           "language model)")
    return value


def _final_norm(model, kind: str, d_model: int):
    ln = getattr(model, "ln_final", None)
    if not isinstance(ln, nn.Module) or isinstance(ln, nn.Identity):
        raise AdapterError(f"{kind}: no final norm (cfg.normalization_type="
                           f"{getattr(model.cfg, 'normalization_type', None)!r}); fusedlens decodes through a "
                           "LayerNorm or RMSNorm")
    # HookedTransformer's norms call their parameters w and b; the bridge's wrap HF modules (weight, bias).
    attrs = ("w", "b") if kind == "HookedTransformer" else ("weight", "bias")
    return ln, final_norm_from_module(ln, d_model, weight_attr=attrs[0], bias_attr=attrs[1])


def is_centred(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """W [vocab, d] (and b) with a zero mean over the vocabulary, as center_unembed leaves them.

    A column's mean, relative to its mean |entry|, is ~1/sqrt(vocab) uncentred, and centred only
    what rounding the stored entries left: CENTRED_RTOL, or 8 eps/sqrt(vocab) for a coarse dtype (bf16)."""
    tol = max(CENTRED_RTOL, 8 * torch.finfo(weight.dtype).eps / weight.shape[0] ** 0.5)
    w = weight.detach().double()
    if not bool((w.mean(0).abs() <= tol * w.abs().mean(0)).all()):
        return False
    return bias is None or abs(float(bias.double().mean())) <= tol * float(bias.double().abs().mean())


def _unembed(model, kind: str, d_model: int) -> Unembed:
    w_u = _part(model, "W_U", kind)  # [d_model, vocab]
    if not isinstance(w_u, torch.Tensor) or w_u.dim() != 2 or w_u.shape[0] != d_model:
        raise AdapterError(f"{kind}: W_U of shape {tuple(getattr(w_u, 'shape', ()))} is not [d_model={d_model}, vocab]")
    weight = w_u.detach().T
    weight = weight if weight.is_contiguous() else weight.contiguous()  # the bridge's W_U is lm_head.weight.T: shared
    bias = getattr(model, "b_U", None)
    bias = bias.detach() if isinstance(bias, torch.Tensor) and bool(bias.ne(0).any()) else None
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return Unembed(weight, bias, float(cap) if cap is not None and cap > 0 else None)


def _hook_points(model, kind: str, n_layers: int) -> dict[str, nn.Module]:
    hooks = model.hook_dict
    no_mid = bool(getattr(model.cfg, "parallel_attn_mlp", False) or getattr(model.cfg, "attn_only", False))
    names = {"embed": HOOKS["embed"]}
    for i in range(n_layers):
        if not no_mid and HOOKS["mid"].format(i=i) in hooks:
            names[f"mid.{i}"] = HOOKS["mid"].format(i=i)
        names[f"resid.{i}"] = HOOKS["resid"].format(i=i)
    missing = [name for name in names.values() if name not in hooks]
    if missing:
        raise AdapterError(f"{kind}: no hook point {missing[0]} (the residual stream's hook_resid_pre/post)")
    return {site: hooks[name] for site, name in names.items()}


def _runner(model):
    """Run the model for its hooks. Both kinds derive each row's positions from the attention mask
    themselves (as capture would), so the positions capture offers are not passed on."""

    def run_forward(input_ids, attention_mask, _position_ids=None):
        return model(input_ids, return_type=None, attention_mask=attention_mask)

    return run_forward


def lens_model(model, tokenizer=None) -> LensModel:
    """The LensModel of a HookedTransformer or TransformerBridge."""
    kind = model_kind(model)
    cfg = _part(model, "cfg", kind)
    blocks = _part(model, "blocks", kind)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise AdapterError(f"{kind}: blocks is a {type(blocks).__name__}, not a non-empty ModuleList")
    d_model = int(cfg.d_model)
    ln, norm = _final_norm(model, kind, d_model)
    unembed = _unembed(model, kind, d_model)
    centred = unembed.softcap is None and is_centred(unembed.weight, unembed.bias)
    if centred:
        warnings.warn(f"{kind}: the unembedding is centred (TransformerLens center_unembed): log-probs, entropy, KL, "
                      "ranks and top-k ids are the model's, but lse, top-k logits and target logits are each token's "
                      "logits minus their mean; load with center_unembed=False for the raw logits", stacklevel=3)
    return LensModel(model=model, layers=blocks, final_norm_module=ln, norm=norm, unembed=unembed,
                     embed=getattr(model, "embed", None),
                     tokenizer=tokenizer if tokenizer is not None else getattr(model, "tokenizer", None),
                     paths={"source": kind, "layers": "blocks", "final_norm": "ln_final", "unembed": "W_U, b_U",
                            "sites": "blocks.{i}.hook_resid_pre/mid/post"},
                     hook_points=_hook_points(model, kind, len(blocks)), run_forward=_runner(model),
                     logits_centered=centred)


def residuals_from_cache(cache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                         layers: Sequence[int] | None = None, embed: bool = True, mid: bool = False) -> Residuals:
    """The residual stream of a `run_with_cache` cache as capture's Residuals (same site names and order).

    cache: an ActivationCache (or any mapping) holding blocks.{i}.hook_resid_post (and _pre of
    block 0 for embed, _mid for mid); layers: block indices (default: every block in the cache;
    the last one given is the final site, so include the last block for KL to final).
    input_ids / attention_mask: the batch the cache was run on (mask: padding, as run_with_cache got it).
    """
    keys = set(cache.keys())
    if layers is None:
        layers = sorted(int(k.split(".")[1]) for k in keys
                        if k.startswith("blocks.") and k.endswith(".hook_resid_post"))
    names = ([("embed", HOOKS["embed"])] if embed else []) + [
        (f"{part}.{i}", HOOKS[part].format(i=i)) for i in layers for part in (("mid", "resid") if mid else ("resid",))]
    missing = [name for _, name in names if name not in keys]
    if not layers or missing:
        raise ValueError(f"cache: no {missing[0] if missing else 'blocks.{i}.hook_resid_post'} "
                         "(run_with_cache with names_filter=lambda n: 'hook_resid' in n)")
    return residuals_from_tensors([site for site, _ in names], [cache[name] for _, name in names], input_ids,
                                  attention_mask)
