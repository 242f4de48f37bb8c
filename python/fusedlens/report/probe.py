"""A probe run as a table, JSON and the R²-against-layer picture."""
from __future__ import annotations

import os

from .common import pyplot, write_json


def format_number(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_probe_table(result) -> str:
    """One line per site: the first target's fit in full, then every other target's held-out R²."""
    main, others = result.targets[0], result.targets[1:]
    header = (f"{'site':>9} {'n_train':>8} {'rank':>5} {'lambda':>10} {'alpha':>8} "
              f"{'R2 train':>9} {'R2 val':>9} {'R2 held-out':>11}" + "".join(f" {'held ' + t:>13}" for t in others))
    lines = [f"target: {main} (R² of the ridge probe; val = {result.meta.get('folds', '?')}-fold)", header,
             "-" * len(header)]
    for row in result.rows():
        f = row["targets"][main]
        lines.append(f"{row['site']:>9} {f['n_train']:>8} {f['rank']:>5} {f['lam']:>10.3g} {f['alpha']:>8.2g} "
                     f"{f['r2_train']:>9.4f} {f['r2_val']:>9.4f} {format_number(f['r2_heldout'], '>11.4f')}"
                     + "".join(f" {format_number(row['targets'][t]['r2_heldout'], '>13.4f')}" for t in others))
    return "\n".join(lines)


def plot_probe_r2(result, path: str, title: str = "ridge probes") -> None:
    plt = pyplot()
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


def write_probe_outputs(result, out_dir: str, name: str = "probe") -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}_r2.png")
    write_json({**result.meta, "targets": result.targets, "layers": result.rows(), "claim": result.claim()},
                      json_path)
    meta = result.meta
    plot_probe_r2(result, png_path, title=f"ridge probes, {meta.get('model', {}).get('model', '')}: "
                                          f"{meta.get('train_tokens')} train / {meta.get('heldout_tokens')} held-out tokens")
    return json_path, png_path
