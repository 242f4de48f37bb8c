"""The tuned-lens evaluation report: logit vs tuned lens per site, as a table, JSON and a picture."""
from __future__ import annotations

import os

from ..core.files import write_json
from .common import pyplot

LENSES = ("logit", "tuned")


def format_tuned_table(rows: list[dict]) -> str:
    header = (f"{'site':>9} {'KL logit':>10} {'KL tuned':>10} {'CE logit':>10} {'CE tuned':>10} "
              f"{'top1 logit':>10} {'top1 tuned':>10}")
    lines = [header + "   (KL, CE in bits/token; top1 = agreement with the final layer)", "-" * len(header)]
    for r in rows:
        lines.append(f"{r['site']:>9} {r['kl_bits_logit']:>10.4f} {r['kl_bits_tuned']:>10.4f} "
                     f"{r['ce_bits_logit']:>10.4f} {r['ce_bits_tuned']:>10.4f} "
                     f"{r['top1_agreement_logit']:>10.3f} {r['top1_agreement_tuned']:>10.3f}")
    return "\n".join(lines)


def plot_tuned_eval(rows: list[dict], path: str, title: str) -> None:
    plt = pyplot()
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


def write_tuned_report(rows: list[dict], out_dir: str, meta: dict, title: str) -> tuple[str, str]:
    """tuned_eval.json and tuned_eval.png in out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, "tuned_eval.json"), os.path.join(out_dir, "tuned_eval.png")
    write_json({**meta, "layers": rows}, json_path)
    plot_tuned_eval(rows, png_path, title)
    return json_path, png_path


# ---- the interactive page (report/page.py draws it) ----
def _log_range(values) -> dict:
    """A log axis from half the smallest positive value (the chart's own floor, 1e-6, would squash the curves)."""
    positive = [v for v in values if v is not None and 0 < v < float("inf")]
    return {"log": True, **({"ymin": min(positive) / 2} if positive else {})}


def tuned_eval_views(rows: list[dict]) -> list[dict]:
    """Per site, logit lens against tuned lens: KL to the final layer (log scale; the final site, 0 by
    definition, left out), the next token's cross-entropy, and top-1 agreement with the final layer."""
    def series(key, shown):
        return [{"name": f"{name} lens", "y": [r[f"{key}_{name}"] for r in shown]} for name in LENSES]

    better = sum(r["kl_bits_tuned"] < r["kl_bits_logit"] for r in rows[:-1])
    kl = series("kl_bits", rows[:-1])
    return [{"type": "lines", "title": "KL(final ‖ lens), bits per token", "x": [r["site"] for r in rows[:-1]],
             **_log_range([v for s in kl for v in s["y"]]), "series": kl,
             "note": f"the tuned lens is closer to the final layer at {better} of {len(rows) - 1} sites"},
            {"type": "lines", "title": "cross-entropy of the next token, bits", "x": [r["site"] for r in rows],
             "series": series("ce_bits", rows)},
            {"type": "lines", "title": "top-1 agreement with the final layer", "x": [r["site"] for r in rows],
             "ymin": 0, "ymax": 1, "series": series("top1_agreement", rows)}]


def tuned_train_views(history: dict) -> list[dict]:
    """The training loss (mean KL to the final layer per site, nats) at every step."""
    loss = history["loss"]
    return [{"type": "lines", "title": "training: mean KL(final ‖ tuned lens) per site, nats",
             "x": list(range(1, len(loss) + 1)), **_log_range(loss), "series": [{"name": "loss", "y": loss}],
             "note": f"{len(loss)} steps, {history.get('tokens', 0)} tokens, {history.get('seconds', 0):.1f} s"}]
