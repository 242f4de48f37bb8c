"""Per-layer tables and pictures of lens results."""
from __future__ import annotations

import json
import math

import torch

from .reference import LensStats

COLUMNS = (("kl_to_final", "KL(final‖layer) nats"), ("top1_agreement", "top-1 = final top-1"),
           ("next_token_accuracy", "next-token accuracy"), ("entropy", "entropy nats"))


def per_layer_summary(stats: LensStats, sites: list[str], targets: torch.Tensor | None = None) -> list[dict]:
    """Mean statistics per site over the tokens (target statistics over tokens that have one)."""
    has_target = targets >= 0 if targets is not None and stats.target_rank is not None else None
    rows = []
    for i, site in enumerate(sites):
        row = {"site": site,
               "kl_to_final": float(stats.kl_to_final[i].double().mean()),
               "top1_agreement": float((stats.top1[i] == stats.top1[-1]).double().mean()),
               "entropy": float(stats.entropy[i].double().mean()),
               "final_top1_rank_median": float(stats.final_top1_rank[i].double().median())}
        if has_target is not None and bool(has_target.any()):
            row["next_token_accuracy"] = float((stats.top1[i][has_target] == targets[has_target]).double().mean())
            row["target_logprob"] = float(stats.target_logprob[i][has_target].double().mean())
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    keys = [k for k, _ in COLUMNS if k in rows[0]] + [k for k in ("target_logprob",) if k in rows[0]]
    header = f"{'site':>9} " + " ".join(f"{k:>19}" for k in keys)
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['site']:>9} " + " ".join(f"{r[k]:>19.4f}" for k in keys))
    return "\n".join(lines)


def plot_layer_curves(rows: list[dict], path: str, title: str = "logit lens") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(k, label) for k, label in COLUMNS if k in rows[0]]
    x = list(range(len(rows)))
    ncols = 2
    nrows = math.ceil(len(present) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(11, 3.4 * nrows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, present):
        ax.plot(x, [r[key] for r in rows], marker="o", markersize=3)
        ax.set_title(label)
        ax.set_xlabel("site (0 = embedding)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
