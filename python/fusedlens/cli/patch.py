"""`fusedlens patch`: activation patching (causal tracing) of a clean prompt into a corrupted one over a
layers × positions grid, batched."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_output_dir
from ..core.config import ModelOptions, option, out_default
from .config import add_arguments, from_args

HELP = "activation patching: restore a clean run's state into a corrupted run at every layer and position"


@dataclass(kw_only=True)
class PatchConfig(ModelOptions):
    clean: str = option("", "the clean prompt")
    corrupted: str = option("", "the corrupted prompt (same token count)")
    answer: str = option("", "one token: the clean run's answer (e.g. ' Paris')")
    counterfactual: str | None = option(None, "one token: metric = logit(answer) - logit(counterfactual)")
    metric: str | None = option(None, "logit_diff (needs --counterfactual; its default) or prob",
                                choices=("logit_diff", "prob"))
    kinds: str = option("resid,attn,mlp", "grids: resid (with the embedding), mid, attn, mlp, head")
    batch_size: int = option(32, "patches per forward")
    out: str = option(out_default("patch"), "output folder")
    progress: bool = option(True, "no progress bar")


def main(args) -> int:
    from ..intervene.patching import patch
    from ..report.patch import format_patch_table, write_patch_outputs

    cfg = from_args(PatchConfig, args)
    for name in ("clean", "corrupted", "answer"):
        if not getattr(cfg, name):
            raise ValueError(f"{name}: required (--{name})")
    check_output_dir("out", cfg.out)
    lm = cfg.load()
    result = patch(lm, cfg.clean, cfg.corrupted, cfg.answer, cfg.counterfactual, metric=cfg.metric,
                   kinds=[k.strip() for k in cfg.kinds.split(",") if k.strip()], batch_size=cfg.batch_size,
                   progress=cfg.progress)
    print(format_patch_table(result))
    print("wrote " + ", ".join(write_patch_outputs(result, cfg.out)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("patch", help=HELP)
    add_arguments(p, PatchConfig)
    p.set_defaults(func=main)
