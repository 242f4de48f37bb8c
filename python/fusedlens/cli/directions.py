"""`fusedlens directions`: reading vectors (difference of means, RepE's PCA of paired differences, Fisher/LDA)
of every layer from a contrast, with held-out accuracy and AUROC, a per-layer plot and a LAT scan."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.backends import BACKENDS
from ..core.checks import check_output_dir
from ..core.backends import BACKEND_HELP
from ..core.fields import option
from ..core.models import ModelOptions
from ..directions.solve import KINDS
from .options import add_arguments, from_args, out_default

HELP = ("reading vectors from a contrast (pos/neg, pairs or a labeled file): difference of means, PCA of paired "
        "differences (RepE), Fisher/LDA per layer; held-out accuracy/AUROC, directions.pt, plot, LAT scan")


@dataclass(kw_only=True)
class DirectionsConfig(ModelOptions):
    pos: str | None = option(None, "JSONL of the positive class, one {\"text\"} per line (with --neg)")
    neg: str | None = option(None, "JSONL of the negative class; the i-th line pairs with --pos's i-th")
    pairs: str | None = option(None, "JSONL of {\"pos\": ..., \"neg\": ...} pairs (texts or {\"text\", \"span\"})")
    labeled: str | None = option(None, "JSONL of {\"text\", \"label\"}: two classes")
    label_key: str = option("label", "the label field of --labeled")
    positive: str | None = option(None, "the positive label of --labeled (default: the second in sorted order)")
    position: str = option("last", "rows per text: its last token, all tokens, or the tokens overlapping its "
                                   "\"span\": [start, end) (characters)", choices=("last", "all", "span"))
    layers: str = option("all", "blocks: all, a-b or i,j,k (the embedding output is always included)")
    heldout: float = option(0.2, "fraction of pairs held out for accuracy / AUROC (seeded split by pair)")
    seed: int = option(0, "seed of the held-out split")
    lda_ridge: float = option(0.1, "λ of the LDA: (Σ_pooled + λ·tr(Σ_pooled)/d·I)⁻¹(μ+ − μ−)")
    batch_size: int = option(16, "pairs per forward")
    scan_text: str | None = option(None, "a text to scan: tokens × layers coloured by the projection")
    scan_kind: str = option("mean_diff", "the direction the scan projects on", choices=KINDS)
    backend: str | None = option(None, BACKEND_HELP, choices=BACKENDS)
    out: str = option(out_default("directions"), "output folder")
    progress: bool = option(True, "no progress bar")


def main(args) -> int:
    import os

    from ..core.capture import parse_layers
    from ..directions import directions
    from ..report.directions import format_directions_table, plot_directions, plot_scan
    from ..report.page import REPORT

    from ..directions.inputs import read_pairs, split
    from ..directions.solve import check_ridge

    cfg = from_args(DirectionsConfig, args)
    items, _ = read_pairs(None, pos=cfg.pos, neg=cfg.neg, pairs=cfg.pairs, labeled=cfg.labeled,
                          label_key=cfg.label_key, positive=cfg.positive, position=cfg.position)
    split(len(items), cfg.heldout, cfg.seed)
    check_ridge(cfg.lda_ridge)
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {cfg.batch_size}")
    if cfg.scan_text is not None and not cfg.scan_text.strip():
        raise ValueError("scan_text: expected a non-empty text")
    check_output_dir("out", cfg.out, "directions")
    lm = cfg.load()
    result = directions(lm, pos=cfg.pos, neg=cfg.neg, pairs=cfg.pairs, labeled=cfg.labeled, label_key=cfg.label_key,
                        positive=cfg.positive, position=cfg.position, layers=parse_layers(cfg.layers, lm.n_layers),
                        heldout=cfg.heldout, seed=cfg.seed, lda_ridge=cfg.lda_ridge, batch_size=cfg.batch_size,
                        backend=cfg.backend, progress=cfg.progress)
    d = result.to_dict()
    print(format_directions_table(d))
    for kind, best in d["best_heldout_accuracy"].items():
        if best:
            print(f"best held-out accuracy, {kind}: {best['accuracy']:.3f} at {best['site']}")
    written = list(result.save(cfg.out))
    png = os.path.join(cfg.out, "directions.png")
    plot_directions(d, png)
    written.append(png)
    if cfg.scan_text:
        scan = result.scan(lm, cfg.scan_text, cfg.scan_kind)
        png = os.path.join(cfg.out, "directions_scan.png")
        plot_scan(scan, lm.tokenizer, png)
        written.append(png)
    result.tokenizer = lm.tokenizer
    written.append(result.save_html(os.path.join(cfg.out, REPORT)))  # the scan, if any, rides along
    print("wrote " + ", ".join(written) + " (open report.html in a browser)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("directions", help=HELP)
    add_arguments(p, DirectionsConfig)
    p.set_defaults(func=main)
