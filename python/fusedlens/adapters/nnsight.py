"""nnsight → fusedlens: the LensModel of the HF model an nnsight wrapper holds, and the residuals a trace saved.

    model = TransformersModel(hf_model, task="text-generation", tokenizer=tok)   # or LanguageModel(hf_model, ...)
    lm = lens_model(model)                                    # LensModel.from_hf of the wrapped HF model
    with model.trace({"input_ids": ids, "attention_mask": mask}):
        saved = save_sites(model, lm, mid=True)               # {"embed": ..., "mid.0": ..., "resid.0": ...}, saved
    res = residuals_from_saved(saved, ids, mask)              # capture's Residuals: hidden [sites, tokens, d]
    ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets)

The sites are capture's: `embed` is block 0's input, `mid.i` the input of block i's pre-MLP
norm, `resid.i` block i's output (pre final norm); any `.output` you saved yourself works as well
(`residuals_from_saved` takes a dict of [batch, seq, d] tensors, or tuples holding one first).
The trace runs the HF model as given: pad on the right, or pass `position_ids` in the input
dict, for a left-padded row to equal its sequence run alone.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..core.capture import Residuals, check_layers, residuals_from_tensors
from ..core.structure import mid_norm_name
from ..core.models import AdapterError, LensModel


def wrapped_module(model) -> nn.Module:
    """The torch module an nnsight model (an Envoy: NNsight, LanguageModel, TransformersModel) wraps."""
    module = getattr(model, "_module", None)
    if not isinstance(module, nn.Module) or isinstance(model, nn.Module):
        raise AdapterError(f"model: expected an nnsight model (LanguageModel, TransformersModel, NNsight), "
                           f"got {type(model).__name__}")
    return module


def lens_model(model, **paths) -> LensModel:
    """LensModel.from_hf of the wrapped HF model, with the wrapper's tokenizer; paths as from_hf takes them."""
    return LensModel.from_hf(wrapped_module(model), getattr(model, "tokenizer", None), **paths)


def _envoy(model, path: str):
    envoy = model
    for part in path.split("."):
        envoy = getattr(envoy, part)
    return envoy


def save_sites(model, lm: LensModel, *, layers: Sequence[int] | None = None, embed: bool = True,
               mid: bool = False) -> dict:
    """Inside `model.trace(...)`: save the residual at every site, in stream order; returns the saved dict.

    After the trace its values are the [batch, seq, d_model] tensors (block outputs may be tuples,
    as some HF blocks return them); hand it to `residuals_from_saved`.
    """
    from nnsight import save  # only meaningful inside an nnsight trace

    layers = list(range(lm.n_layers)) if layers is None else check_layers(layers, lm.n_layers)
    blocks = _envoy(model, lm.paths["layers"])
    sites = {}
    if embed:
        sites["embed"] = blocks[0].input
    for i in layers:  # nnsight wants modules in the order they run
        if mid:
            sites[f"mid.{i}"] = getattr(blocks[i], mid_norm_name(lm.layers[i])).input
        sites[f"resid.{i}"] = blocks[i].output
    return save(sites)


def residuals_from_saved(saved: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Residuals:
    """Saved residuals {site: [batch, seq, d_model]} (stream order, final block last) as capture's Residuals."""
    if not isinstance(saved, dict) or not saved:
        raise ValueError(f"saved: expected a non-empty dict of site → saved tensor, got {type(saved).__name__}")
    return residuals_from_tensors(list(saved), list(saved.values()), input_ids, attention_mask)
