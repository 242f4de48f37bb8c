"""A concept-geometry result (concepts.concepts) as a table and the concept × concept heatmap: mean pair
cosines of unembedding differences under the Euclidean and the causal inner product side by side, the
diagonal being within-concept consistency."""
from __future__ import annotations

import math
import os

import torch

from ..core.files import write_json
from .common import pyplot
from .page import array


def _f(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.3f}"


def format_concepts_table(result) -> str:
    eu, ca = result.geometry["euclidean"], result.geometry["causal"]
    n = result.n_pairs()
    width = max(len(c) for c in result.concepts)
    lines = [f"inner product: {result.inner_product}",
             f"alignment: {result.alignment_note}",
             f"pairs used: {sum(n.values())}, skipped: {len(result.skipped)} "
             f"(forms: {_forms(result)})",
             f"{'concept':<{width}}  pairs  within(eu)  within(C)  between(eu)  between(C)  align(eu)  align(C)"]
    for i, c in enumerate(result.concepts):
        k = len(result.concepts)
        others = [j for j in range(k) if j != i]
        b_eu = float(torch.nanmean(eu.pairs[i, others])) if others else math.nan
        b_ca = float(torch.nanmean(ca.pairs[i, others])) if others else math.nan
        lines.append(f"{c:<{width}}  {n[c]:>5}  {_f(float(eu.within[i])):>10}  {_f(float(ca.within[i])):>9}  "
                     f"{_f(b_eu):>11}  {_f(b_ca):>10}  {_f(float(eu.alignment[i])):>9}  {_f(float(ca.alignment[i])):>8}")
    for kind, s in result.summary().items():
        lines.append(f"{kind}: within-concept mean {_f(s['within_mean'])}, between-concept mean "
                     f"{_f(s['between_mean'])}, mean |cos| of concept directions {_f(s['between_directions_abs_mean'])}")
    few = [c for c in result.concepts if n[c] < 2]
    if few:
        lines.append(f"fewer than 2 usable pairs (within-concept consistency undefined): {', '.join(few)}")
    if result.skipped:
        lines.append("skipped: " + "; ".join(f"{s['concept']}: {s['x']}→{s['y']} ({s['reason']})"
                                             for s in result.skipped))
    return "\n".join(lines)


def _forms(result) -> str:
    counts = {}
    for pairs in result.pairs.values():
        for p in pairs:
            counts[p["form"]] = counts.get(p["form"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def plot_concepts_heatmap(result, path: str, title: str = "") -> str:
    plt = pyplot()
    k = len(result.concepts)
    n = result.n_pairs()
    labels = [f"{c} ({n[c]})" for c in result.concepts]
    fig, axes = plt.subplots(1, 2, figsize=(4.0 + 1.1 * k, 1.8 + 0.5 * k), squeeze=False)
    for ax, kind in zip(axes[0], ("euclidean", "causal")):
        m = result.geometry[kind].pairs
        lim = max(0.05, float(m.nan_to_num().abs().max()))
        im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        for i in range(k):
            for j in range(k):
                v = float(m[i, j])
                ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if not math.isnan(v) and abs(v) > 0.6 * lim else "black",
                        fontweight="bold" if i == j else "normal")
        ax.set_xticks(range(k))
        ax.set_xticklabels(result.concepts, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(k))
        ax.set_yticklabels(labels if kind == "euclidean" else result.concepts, fontsize=7)
        s = result.summary()[kind]
        name = "Euclidean ⟨x, y⟩" if kind == "euclidean" else "causal ⟨x, y⟩ = xᵀ Cov(γ)⁻¹ y"
        ax.set_title(f"{name}\nwithin {s['within_mean']:.3f}, between {s['between_mean']:.3f}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{title}mean cosine of unembedding differences Δγ, concept × concept "
                 f"(diagonal: within-concept consistency)\n{result.alignment_note}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")  # long rotated concept names stay inside
    plt.close(fig)
    return path


def write_concepts_outputs(result, out_dir: str, name: str = "concepts", title: str = "") -> list[str]:
    """<name>.json (loadable: ConceptsResult.load_json), <name>.png, <name>.txt and <name>_directions.pt
    (the mean Δγ per concept, [concepts, d] float64, with the concept names)."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    write_json(result.to_json(), base + ".json")
    png = plot_concepts_heatmap(result, base + ".png", title)
    with open(base + ".txt", "w") as f:
        f.write(format_concepts_table(result) + "\n")
    out = [base + ".json", png, base + ".txt"]
    if result.directions is not None:
        torch.save({"concepts": result.concepts, "directions": result.directions}, base + "_directions.pt")
        out.append(base + "_directions.pt")
    return out


# ---- the interactive page (report/page.py draws it) ----
def concepts_views(result) -> list[dict]:
    """The concept × concept grid of mean pair cosines (diagonal: within-concept consistency) and of the
    concept directions, Euclidean and causal (switchable; click a cell for its pairs), the per-concept table
    and the skipped pairs."""
    names, n = result.concepts, result.n_pairs()
    eu, ca = result.geometry["euclidean"], result.geometry["causal"]

    def pairs_table(c):
        return {"title": f"{c}: {n[c]} pairs", "head": ["x", "y"],
                "rows": [[{"t": p["x"]}, {"t": p["y"]}] for p in result.pairs[c]]}

    details = {f"{i},{j}": {"title": f"{a} × {b}" if i != j else f"{a} (within)",
                            "tables": [pairs_table(a)] + ([pairs_table(b)] if i != j else [])}
               for i, a in enumerate(names) for j, b in enumerate(names)}
    layers = [{"name": f"mean pair cosine, {label}", "values": array(g.pairs), "scale": "diverging"}
              for g, label in ((eu, "Euclidean"), (ca, "causal"))]
    layers += [{"name": f"cosine of the concept directions, {label}", "values": array(g.directions),
                "scale": "diverging"} for g, label in ((eu, "Euclidean"), (ca, "causal"))]
    s = result.summary()
    views = [{"type": "heatmap", "title": "concept × concept: cosines of unembedding differences Δγ",
              "rows": [f"{c} ({n[c]})" for c in names], "cols": names, "row_title": "concept",
              "col_title": "concept", "corner": "", "show_values": True, "tall_cols": True, "layers": layers,
              "details": details,
              "note": "diagonal: within-concept consistency (each pair against the concept's other pairs); "
                      "within / between means: "
                      + "; ".join(f"{k} {s[k]['within_mean']:.3f} / {s[k]['between_mean']:.3f}"
                                  for k in ("euclidean", "causal"))
                      + ". Click a cell for its pairs."},
             {"type": "table", "title": "per concept", "head": ["concept", "pairs", "within (Euclidean)",
                                                                "within (causal)", "alignment (Euclidean)",
                                                                "alignment (causal)"],
              "rows": [[c, n[c], float(eu.within[i]), float(ca.within[i]), float(eu.alignment[i]),
                        float(ca.alignment[i])] for i, c in enumerate(names)],
              "note": f"alignment: {result.alignment_note}. Inner product: {result.inner_product}"}]
    if result.skipped:
        views.append({"type": "table", "title": f"skipped pairs ({len(result.skipped)})",
                      "head": ["concept", "x", "y", "why"],
                      "rows": [[p["concept"], {"t": p["x"]}, {"t": p["y"]}, p["reason"]] for p in result.skipped]})
    return views
