"""`fusedlens patchscope`: decode a source prompt's hidden state at every layer by patching it into a
target prompt (token identity or description) and letting the model continue."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.checks import check_output_dir
from ..core.fields import option
from ..core.models import ModelOptions
from .options import add_arguments, from_args, out_default

HELP = "patchscopes: a hidden state of one prompt, written into another, read out by generation"


@dataclass(kw_only=True)
class PatchscopeConfig(ModelOptions):
    source: str = option("", "the source prompt (its last token is read unless --source-position)")
    source_position: int = option(-1, "position in the source prompt")
    target: str = option("identity", "identity, description or a prompt of your own")
    target_position: int | None = option(None, "position in the target (default: its '?' placeholder)")
    target_layer: int | None = option(None, "write every source layer into this target layer (default: the same)")
    layers: str = option("all", "source layers: all, a-b or i,j,k")
    n_tokens: int = option(10, "tokens generated")
    target_model: str | None = option(None, "M*: another model (HF name, folder or .gguf) read the patch (default: --model)")
    mapping: str | None = option(None, "a torch file with the affine map into M*'s width: a [d*, d] tensor or "
                                       "{'weight': [d*, d], 'bias': [d*]}")
    out: str = option(out_default("patchscope"), "output folder")
    progress: bool = option(True, "no progress bar")


def main(args) -> int:
    from ..core.capture import parse_layers
    from ..intervene.patchscope import patchscope
    from ..core.files import write_json
    from ..report.page import REPORT

    cfg = from_args(PatchscopeConfig, args)
    from ..intervene.patchscope import TARGETS

    if not cfg.source.strip():
        raise ValueError("source: required (--source)")
    if not cfg.target.strip():
        raise ValueError("target: expected identity, description or a prompt")
    if cfg.target not in TARGETS and "?" not in cfg.target and cfg.target_position is None:
        raise ValueError("target: the target prompt has no '?' placeholder; put a '?' where the state is written, "
                         "or give --target-position")
    if cfg.n_tokens < 1:
        raise ValueError(f"n_tokens: expected >= 1, got {cfg.n_tokens}")
    check_output_dir("out", cfg.out, "patchscope")
    mapping = load_mapping(cfg.mapping) if cfg.mapping else None
    lm = cfg.load()
    target_lm = None
    if cfg.target_model:
        from ..core.models import load_model

        target_lm = load_model(cfg.target_model)
    r = patchscope(lm, cfg.source, target_lm=target_lm, mapping=mapping, source_position=cfg.source_position, layers=parse_layers(cfg.layers, lm.n_layers),
                   target=cfg.target, target_position=cfg.target_position, target_layer=cfg.target_layer,
                   n_tokens=cfg.n_tokens, progress=cfg.progress)
    lines = [f"source {cfg.source!r}, token {r.source_token!r}; target position {r.meta['target_position']}",
             f"{'layer':>5}  {'lens top-1 at the patch':>24}  generation"]
    for layer, t_layer, gen, top in zip(r.source_layers, r.target_layers, r.generations, r.lens_top1):
        lines.append(f"{layer:>5}  {top[t_layer]!r:>24}  {gen!r}")
    table = "\n".join(lines)
    print(table)
    os.makedirs(cfg.out, exist_ok=True)
    write_json(r.to_dict(), os.path.join(cfg.out, "patchscope.json"))
    with open(os.path.join(cfg.out, "patchscope.txt"), "w") as f:
        f.write(table + "\n")
    r.save_html(os.path.join(cfg.out, REPORT))
    print(f"wrote {cfg.out}/patchscope.json, patchscope.txt, {REPORT} (the interactive page; open it in a browser)")
    return 0


def load_mapping(path: str):
    """A saved affine map: a [d*, d] tensor, or a dict with 'weight' (and optionally 'bias'); never code."""
    import torch

    from ..core.files import load_torch

    obj = load_torch("mapping", path)
    if isinstance(obj, dict) and isinstance(obj.get("weight"), torch.Tensor) and obj["weight"].dim() == 2:
        bias = obj.get("bias")
        if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != obj["weight"].shape[:1]):
            raise ValueError(f"mapping: {path}: 'bias' must be a [{obj['weight'].shape[0]}] tensor")
        return obj["weight"], bias
    if isinstance(obj, torch.Tensor) and obj.dim() == 2:
        return obj, None
    raise ValueError(f"mapping: {path} holds neither a [d*, d] tensor nor a dict with 'weight'")


def register(sub) -> None:
    p = sub.add_parser("patchscope", help=HELP)
    add_arguments(p, PatchscopeConfig)
    p.set_defaults(func=main)
