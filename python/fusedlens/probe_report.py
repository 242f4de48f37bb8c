"""Tables, JSON and the R²-against-layer picture of a probe run, and the `fusedlens probe` command."""
from __future__ import annotations

import os

from . import report
from .probe import TARGETS, ProbeResult


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_probe_table(result: ProbeResult) -> str:
    """One line per site: the first target's fit in full, then every other target's held-out R²."""
    main, others = result.targets[0], result.targets[1:]
    header = (f"{'site':>9} {'n_train':>8} {'rank':>5} {'lambda':>10} {'alpha':>8} "
              f"{'R2 train':>9} {'R2 val':>9} {'R2 held-out':>11}" + "".join(f" {'held ' + t:>13}" for t in others))
    lines = [f"target: {main} (R² of the ridge probe; val = {result.meta.get('folds', '?')}-fold)", header,
             "-" * len(header)]
    for row in result.rows():
        f = row["targets"][main]
        lines.append(f"{row['site']:>9} {f['n_train']:>8} {f['rank']:>5} {f['lam']:>10.3g} {f['alpha']:>8.2g} "
                     f"{f['r2_train']:>9.4f} {f['r2_val']:>9.4f} {_fmt(f['r2_heldout'], '>11.4f')}"
                     + "".join(f" {_fmt(row['targets'][t]['r2_heldout'], '>13.4f')}" for t in others))
    return "\n".join(lines)


def plot_probe_r2(result: ProbeResult, path: str, title: str = "ridge probes") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(result.sites)))  # logprob and loss (= −logprob) have the same R²: their lines coincide
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for j, name in enumerate(result.targets):
        held = [fits[j]["r2_heldout"] for fits in result.fits]
        if all(v is not None for v in held):
            ax.plot(x, held, marker="o", markersize=3, label=f"{name}: held-out")
        if j == 0:
            ax.plot(x, [fits[0]["r2_train"] for fits in result.fits], ls="--", lw=1, label=f"{name}: train")
            ax.plot(x, [fits[0]["r2_val"] for fits in result.fits], ls=":", lw=1, label=f"{name}: validation")
    ax.axhline(0.6, color="grey", lw=0.8, ls="-.", label="R² = 0.6")
    ax.set_xlabel("site (0 = embedding output, i + 1 = block i)")
    ax.set_ylabel("R²")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_probe_outputs(result: ProbeResult, out_dir: str, name: str = "probe") -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}_r2.png")
    report.write_json({**result.meta, "targets": result.targets, "layers": result.rows(), "claim": result.claim()},
                      json_path)
    meta = result.meta
    plot_probe_r2(result, png_path, title=f"ridge probes, {meta.get('model', {}).get('model', '')}: "
                                          f"{meta.get('train_tokens')} train / {meta.get('heldout_tokens')} held-out tokens")
    return json_path, png_path


def _cmd_probe(args) -> int:
    from .models import load_model
    from .probe import probe

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    corpus = None
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            corpus = f.read()
    lm = load_model(args.model, gguf_file=args.gguf_file)
    result = probe(lm, corpus, train_tokens=args.train_tokens, heldout_tokens=args.heldout_tokens,
                   seq_len=args.seq_len, targets=targets, folds=args.folds, backend=args.backend,
                   progress=not args.no_progress)
    print(format_probe_table(result))
    claim = result.claim()
    print(f"\nclaim: {claim['statement']}: {'holds' if claim['holds'] else 'does not hold'} "
          f"(min held-out R² {_fmt(claim['min_r2_heldout'], '.4f')})")
    t = result.meta["timing"]
    print(f"time: forward {t['forward_s']:.1f}s, targets {t['targets_s']:.1f}s, accumulate {t['accumulate_s']:.1f}s, "
          f"solve {t['solve_s']:.1f}s, total {t['total_s']:.1f}s")
    json_path, png_path = write_probe_outputs(result, args.out)
    print(f"wrote {json_path} and {png_path}")
    return 0


def add_probe_command(sub) -> None:
    p = sub.add_parser("probe", help="per-layer ridge probes of the final output (correct-token logit, ...): "
                                     "held-out R² table, JSON and PNG")
    p.add_argument("--train-tokens", type=int, default=24_000, help="training tokens (default 24000)")
    p.add_argument("--heldout-tokens", type=int, default=8_000, help="held-out tokens after them (default 8000)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per forward (default 512)")
    p.add_argument("--folds", type=int, default=5, help="folds of the penalty's cross-validation (default 5)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {','.join(TARGETS)} "
                                                                "(default all; the first one gets the full table)")
    p.add_argument("--text", default=None, help="a UTF-8 text file as corpus (default: pydoc_data.topics)")
    p.add_argument("--model", default=None, help="HF name, folder or .gguf file (default: embedded SmolLM2-135M)")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model's folder")
    p.add_argument("--backend", default=None, choices=("torch", "cpu", "triton"), help="accumulation kernel")
    p.add_argument("--out", default="fusedlens_out", help="output folder (default fusedlens_out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_probe)
