"""`fusedlens probe`: per-layer ridge probes of the final output over a corpus; held-out R² table, JSON, PNG and
the interactive report.html."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.backends import BACKENDS
from ..core.checks import check_output_dir
from ..core.backends import BACKEND_HELP
from ..core.fields import option
from ..core.models import ModelOptions
from ..probe.targets import TARGETS
from .options import add_arguments, from_args, out_default

HELP = ("per-layer ridge probes of the final output (correct-token logit, ...) at any lag, and of your own "
        "targets and classes: held-out R² / accuracy table, JSON and PNG")


@dataclass(kw_only=True)
class ProbeConfig(ModelOptions):
    train_tokens: int = option(24_000, "training tokens")
    heldout_tokens: int = option(8_000, "held-out tokens after them")
    seq_len: int = option(512, "tokens per forward")
    folds: int = option(5, "folds of the penalty's cross-validation")
    targets: str = option(",".join(TARGETS), f"comma-separated, from {','.join(TARGETS)} (the first one gets the "
                                             "full table)")
    lags: list[int] = option([0], "lag K (repeatable): x_t is probed for the target of position t+K of its "
                                   "sequence; -1 is the linear-accuracy post's experiment as written", flag="--lag")
    text: str | None = option(None, "a UTF-8 text file as corpus (default: pydoc_data.topics)")
    targets_file: str | None = option(None, "per-token targets of your own with their texts: JSONL "
                                            "({text, targets|spans|label} per line) or Parquet (with --texts)")
    texts: str | None = option(None, "the texts of a Parquet targets file: JSONL, one {\"text\"} per line")
    positions: str | None = option(None, "rows kept per sequence: 0, -1 (last), 5- (5 on), 2-10, or a comma list")
    where: str | None = option(None, "keep only rows where this target of the targets file has a value")
    backend: str | None = option(None, BACKEND_HELP, choices=BACKENDS)
    out: str = option(out_default("probe"), "output folder")
    progress: bool = option(True, "no progress bar")


def main(args) -> int:
    import os

    from ..core.files import read_text
    from ..probe import fit_probes
    from ..probe.rows import check_lags, parse_position_ranges
    from ..probe.user_targets import parse_target_file
    from ..report.page import REPORT
    from ..report.probe import format_number, format_probe_table, write_probe_outputs

    cfg = from_args(ProbeConfig, args)
    targets = [t.strip() for t in cfg.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or len(set(targets)) != len(targets):
        raise ValueError(f"targets: expected distinct names from {','.join(TARGETS)}, got {cfg.targets!r}")
    for name, low in (("train_tokens", 2 * cfg.folds), ("heldout_tokens", 0), ("seq_len", 1), ("folds", 2)):
        if getattr(cfg, name) < low:
            raise ValueError(f"{name}: expected >= {low}, got {getattr(cfg, name)}")
    check_lags(cfg.lags)
    parse_position_ranges(cfg.positions)
    if cfg.text and cfg.targets_file:
        raise ValueError("text: a targets file brings its own texts; give --text or --targets-file")
    if cfg.texts and not cfg.targets_file:
        raise ValueError("texts: the texts of a Parquet --targets-file; give that file too")
    corpus = read_text("text", cfg.text) if cfg.text else None
    user = parse_target_file(cfg.targets_file, cfg.texts) if cfg.targets_file else None
    if cfg.where is not None:
        names = sorted({n for _, o in user.lines for n in (o.get("targets") or {})}
                       | {s["name"] for _, o in user.lines for s in o.get("spans") or []}
                       | {"label" for _, o in user.lines if "label" in o}
                       | {r["name"] for r in user.rows}) if user else []
        if cfg.where not in names:
            raise ValueError(f"where: expected the name of a target of --targets-file ({', '.join(names) or 'none'}), "
                             f"got {cfg.where!r}")
    check_output_dir("out", cfg.out, "probe")
    lm = cfg.load()
    result = fit_probes(lm, corpus, train_tokens=cfg.train_tokens, heldout_tokens=cfg.heldout_tokens, seq_len=cfg.seq_len,
                   targets=targets, user_targets=user, lags=cfg.lags, positions=cfg.positions, where=cfg.where,
                   folds=cfg.folds, backend=cfg.backend, progress=cfg.progress)
    print(format_probe_table(result))
    for claim in result.claims():
        print(f"\nclaim: {claim['statement']}: {'holds' if claim['holds'] else 'does not hold'} "
              f"(min held-out R² {format_number(claim['min_r2_heldout'], '.4f')})")
    t = result.meta["timing"]
    print(f"time: forward {t['forward_s']:.1f}s, targets {t['targets_s']:.1f}s, accumulate {t['accumulate_s']:.1f}s, "
          f"solve {t['solve_s']:.1f}s, total {t['total_s']:.1f}s")
    json_path, png_path = write_probe_outputs(result, cfg.out)
    html = result.save_html(os.path.join(cfg.out, REPORT))
    print(f"wrote {json_path}, {png_path} and {html} (open it in a browser: R² per site, each target's fit)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("probe", help=HELP)
    add_arguments(p, ProbeConfig)
    p.set_defaults(func=main)
