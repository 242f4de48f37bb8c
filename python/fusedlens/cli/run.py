"""`fusedlens run`: a corpus through a model, every chosen layer decoded (and probed) in one pass, resumable."""
from __future__ import annotations

import os

from ..job import RunConfig
from .options import add_arguments, from_args

HELP = "a corpus through a model: per-layer lens (and probe) results, resumable"


def main(args) -> int:
    from ..report import format_table
    from ..job import run_corpus

    cfg = from_args(RunConfig, args)
    summary = run_corpus(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_table(summary["layers"]))
        print(f"\n{summary['tokens']} tokens; wrote {cfg.out}/summary.json, throughput.json, layers.png, grid.png, "
              f"prediction_depth.html" + (", records/*.parquet" if cfg.records else ""))
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help=HELP)
    add_arguments(p, RunConfig)
    p.set_defaults(func=main)
