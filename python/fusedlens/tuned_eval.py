"""Held-out comparison of the logit lens and a tuned lens, site by site.

Per site: KL(p_final ‖ p_lens) and the cross-entropy of the next token, both in bits
per token, and top-1 agreement with the final layer, for the logit lens and the tuned
lens side by side. Both go through the fused `ops.lens_stats` (the tuned lens after
its translators), so nothing holds a [tokens × vocab] tensor.
"""
from __future__ import annotations

import math
import os

import torch

from . import ops, report
from .capture import ResidualCapture
from .models import LensModel
from .tuned import TunedLens

LN2 = math.log(2)
LENSES = ("logit", "tuned")


def evaluate(lm: LensModel, lens: TunedLens, ids: torch.Tensor, *, seq_len: int = 256, backend: str | None = None,
             progress: bool = False) -> list[dict]:
    """Mean per-site statistics over held-out ids (1-D), cut into sequences of seq_len tokens."""
    from tqdm.auto import tqdm

    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"ids: expected a 1-D tensor of at least 2 token ids, got shape {tuple(ids.shape)}")
    capture = ResidualCapture(lm, embed=True, mid=any(s.startswith("mid.") for s in lens.sites))
    if capture.sites[:-1] != lens.sites:
        raise ValueError(f"lens: its sites do not match the model's hidden states ({capture.sites[:3]}...)")
    n_sites = len(capture.sites)
    sums = {f"{what}_{name}": torch.zeros(n_sites, dtype=torch.float64)
            for what in ("kl", "ce", "agree") for name in LENSES}
    tokens = targets = 0
    for start in tqdm(range(0, ids.numel() - 1, seq_len), disable=not progress, desc="evaluating", unit="seq"):
        seq = ids[start:start + seq_len]
        if seq.numel() < 2:
            continue
        res = capture.run(seq[None])
        has = res.targets >= 0
        stats = {"logit": ops.lens_stats(res.hidden, lm.norm, lm.unembed, res.targets, backend=backend),
                 "tuned": lens.lens_stats(res.hidden, res.targets, backend=backend)}
        for name, st in stats.items():
            sums[f"kl_{name}"] += st.kl_to_final.double().sum(1).cpu()
            sums[f"ce_{name}"] += -st.target_logprob[:, has].double().sum(1).cpu()
            sums[f"agree_{name}"] += (st.top1 == st.top1[-1:]).double().sum(1).cpu()
        tokens += res.targets.numel()
        targets += int(has.sum())
    rows = []
    for i, site in enumerate(capture.sites):
        row = {"site": site}
        for name in LENSES:
            row[f"kl_bits_{name}"] = float(sums[f"kl_{name}"][i]) / tokens / LN2
            row[f"ce_bits_{name}"] = float(sums[f"ce_{name}"][i]) / targets / LN2
            row[f"top1_agreement_{name}"] = float(sums[f"agree_{name}"][i]) / tokens
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'site':>9} {'KL logit':>10} {'KL tuned':>10} {'CE logit':>10} {'CE tuned':>10} "
              f"{'top1 logit':>10} {'top1 tuned':>10}")
    lines = [header + "   (KL, CE in bits/token; top1 = agreement with the final layer)", "-" * len(header)]
    for r in rows:
        lines.append(f"{r['site']:>9} {r['kl_bits_logit']:>10.4f} {r['kl_bits_tuned']:>10.4f} "
                     f"{r['ce_bits_logit']:>10.4f} {r['ce_bits_tuned']:>10.4f} "
                     f"{r['top1_agreement_logit']:>10.3f} {r['top1_agreement_tuned']:>10.3f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(rows)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key, label in ((axes[0], "kl_bits", "KL(final ‖ lens), bits"), (axes[1], "ce_bits", "cross-entropy, bits")):
        shown = rows[:-1] if key == "kl_bits" else rows  # the final site's KL is 0 by definition
        for name in LENSES:
            ax.plot(x[:len(shown)], [r[f"{key}_{name}"] for r in shown], marker="o", markersize=3,
                    label=f"{name} lens")
        ax.set_title(label)
        ax.set_xlabel("site (0 = embedding)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], out_dir: str, meta: dict, title: str) -> tuple[str, str]:
    """tuned_eval.json and tuned_eval.png in out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, "tuned_eval.json"), os.path.join(out_dir, "tuned_eval.png")
    report.write_json({**meta, "layers": rows}, json_path)
    plot(rows, png_path, title)
    return json_path, png_path
