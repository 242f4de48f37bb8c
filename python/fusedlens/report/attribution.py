"""Attribution patching (intervene.attribution) as a table, a heatmap per node kind, and, beside the
exact grid, a scatter of estimate against exact effect per kind with the top nodes it missed; and the
interactive page of an estimate, and `fusedlens patch`'s page of every method it ran."""
from __future__ import annotations

import os

import torch

from ..core.files import write_json
from .common import pyplot
from .page import array
from .patch import grid_labels, patch_views, position_heatmap


def _node(kind: str, index: list, positions: list, tokens: list) -> str:
    layer = index[0] - (kind == "resid")
    where = "embed" if layer < 0 else f"{kind}.{layer}"
    if len(index) == 3:
        where += f".{index[1]}"
    pos = positions[index[-1]]
    return f"{where}@{pos} {tokens[pos]!r}"


def format_attribution_table(result, n: int = 10) -> str:
    what = "GradDrop magnitude" if result.magnitude_only else "estimated change"
    lines = [f"{result.method} ({what} of {result.metric}; clean {result.clean:.4f}, corrupted {result.corrupted:.4f}, "
             f"{result.meta['pairs']} pair(s), {result.meta['backwards']} backward(s))"]
    for kind in result.kinds:
        est = result.estimate[kind]
        flat = est.reshape(-1)
        order = flat.abs().argsort(descending=True)[:n].tolist()
        cells = []
        for i in order:
            index = [int(v) for v in torch.unravel_index(torch.tensor(i), tuple(est.shape))]
            cells.append(f"{_node(kind, index, result.positions, result.tokens)} {float(flat[i]):+.3f}")
        lines.append(f"{kind} ({flat.numel()} nodes): " + ", ".join(cells))
    if result.verification:
        for kind, v in result.verification.items():
            lines.append(f"verified {kind}: top {len(v['top'])} and {len(v['sample'])} sampled of {v['unverified']} "
                         f"others; {v['sampled_misses']} sampled node(s) with |effect| >= {v['threshold']:.3g}; "
                         f"miss rate <= {v['miss_rate_bound']:.3f} (95 %), <= {v['missed_nodes_bound']:.1f} nodes")
    return "\n".join(lines)


def format_comparison(comparison: dict, method: str, tokens: list, positions: list) -> str:
    lines = [f"{method} against the exact grid:"]
    for kind, c in comparison.items():
        p = "-" if c["pearson"] is None else f"{c['pearson']:.3f}"
        s = "-" if c["spearman"] is None else f"{c['spearman']:.3f}"
        lines.append(f"  {kind}: {c['nodes']} nodes, Pearson {p}, Spearman {s}; of the true top {c['top']}, "
                     f"{len(c['missed'])} missed")
        for m in c["missed"]:
            lines.append(f"    missed {_node(kind, m['index'], positions, tokens)}: exact {m['exact']:+.3f}, "
                         f"estimate {m['estimate']:+.3f} (rank {m['estimate_rank']})")
    return "\n".join(lines)


def plot_attribution(result, path: str) -> str:
    """One heatmap per kind: layers × positions (heads, neurons, q/k/v: summed over them)."""
    plt = pyplot()
    kinds = result.kinds
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 + 2.6 * len(kinds), 6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        r = result.estimate[kind]
        r = r.sum(1) if r.dim() == 3 else r
        top = float(r.abs().max()) or 1.0
        im = ax.imshow(r.numpy(), cmap="Purples" if result.magnitude_only else "RdBu", aspect="auto",
                       vmin=0 if result.magnitude_only else -top, vmax=top)
        ax.set_xticks(range(len(result.positions)))
        ax.set_xticklabels([result.tokens[p] for p in result.positions], rotation=90, fontsize=7)
        ax.set_ylabel("layer" + (" (0 = embed)" if kind == "resid" else ""))
        ax.set_title(kind + (" (summed)" if result.estimate[kind].dim() == 3 else ""), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{result.method}: {'magnitude' if result.magnitude_only else 'estimated change'} of "
                 f"{result.metric}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_against_exact(exact: dict, estimates: list, path: str, title: str = "") -> str:
    """Per kind, each method's estimate against the exact effect (kind -> effects), node by node."""
    plt = pyplot()
    kinds = [k for k in exact if any(k in e.kinds for e in estimates)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        true = exact[kind].double().reshape(-1)
        for e in estimates:
            if kind in e.kinds:
                x = true.abs() if e.magnitude_only else true
                ax.scatter(x.numpy(), e.estimate[kind].reshape(-1).numpy(), s=6, alpha=0.6,
                           label=e.method + (" (|·|)" if e.magnitude_only else ""))
        lo, hi = float(true.min()), float(true.max())
        ax.plot([min(lo, 0), hi], [min(lo, 0), hi], color="k", lw=0.5)
        ax.set_xlabel("exact patch effect")
        ax.set_ylabel("estimate")
        ax.set_title(kind, fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_attribution_outputs(result, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    name = result.method.replace("*", "_star")
    js, table = (os.path.join(out_dir, f"attribution_{name}.{ext}") for ext in ("json", "txt"))
    write_json(result.to_dict(), js)
    with open(table, "w") as f:
        f.write(format_attribution_table(result) + "\n")
    return [js, table, plot_attribution(result, os.path.join(out_dir, f"attribution_{name}.png"))]


# ---- the interactive page (report/page.py draws it) ----
MAX_ROWS = 512  # rows a grid draws whole; a larger one (neurons) draws the TOP_ROWS with the largest |estimate|
TOP_ROWS = 64


def verified_grid(result, kind: str):
    """The exact effects that verification measured, in the estimate's layout (NaN where none ran)."""
    v = (result.verification or {}).get(kind)
    if not v:
        return None
    out = torch.full(tuple(result.estimate[kind].shape), float("nan"), dtype=torch.float64)
    for node in v["top"] + v["sample"]:
        out[tuple(node["index"])] = node["exact"]
    return out


def attribution_grid(result, kind: str, exact: dict | None = None) -> dict:
    """One kind's heatmap over (layer(.unit), position): the estimate (and, for atp*, the signed one); the
    tooltip adds the exact effect where verification (or an exact grid) measured it."""
    est = result.estimate[kind]
    labels = grid_labels(kind, est)
    keep, note = list(range(len(labels))), ""
    if len(labels) > MAX_ROWS:
        keep = sorted(est.reshape(len(labels), -1).abs().amax(1).topk(TOP_ROWS).indices.tolist())
        note = f"the {TOP_ROWS} of {len(labels)} rows with the largest |estimate| at some position"

    def pick(t):
        return t.reshape(len(labels), -1)[keep].double()

    if result.magnitude_only:
        layers = [{"name": "GradDrop magnitude", "values": array(pick(est)), "vmin": 0},
                  {"name": "signed estimate", "values": array(pick(result.signed[kind])), "scale": "diverging"}]
    else:
        layers = [{"name": "estimated change", "values": array(pick(est)), "scale": "diverging"}]
    tips = {}
    verified = verified_grid(result, kind)
    if verified is not None:
        tips["exact (verified)"] = array(pick(verified))
    if exact is not None and kind in exact:
        layers.append({"name": "exact effect (patched)", "values": array(pick(exact[kind])), "scale": "diverging"})
        tips["exact effect"] = layers[-1]["values"]
    return position_heatmap(kind, [labels[i] for i in keep], [result.tokens[p] for p in result.positions],
                            "layer" if est.dim() == 2 else "unit", layers, tips,
                            title=f"{kind}: {layers[0]['name']} of {result.metric}", note=note or None)


def verification_table(result) -> dict | None:
    if not result.verification:
        return None
    return {"type": "table", "title": "verification: nodes patched exactly",
            "head": ["kind", "nodes", "top", "sampled", "sampled misses", "threshold", "miss rate ≤ (95 %)",
                     "missed nodes ≤"],
            "rows": [[k, v["nodes"], len(v["top"]), len(v["sample"]), v["sampled_misses"], v["threshold"],
                      v["miss_rate_bound"], v["missed_nodes_bound"]] for k, v in result.verification.items()]}


def attribution_views(result, vocab=None, exact: dict | None = None) -> list[dict]:
    """A tab per kind (the estimate over layer × position, patch's layout), and the verification table.
    exact: kind -> exact effects in the same layout (a PatchResult's values − corrupted), drawn beside."""
    what = "GradDrop magnitude" if result.magnitude_only else "estimated change"
    note = (f"{result.method}: {what} of {result.metric} (clean {result.clean:.4f}, corrupted {result.corrupted:.4f}, "
            f"{result.meta.get('pairs')} pair(s)); hover a cell for the exact effect where it was measured")
    views = [{"type": "tabs", "title": f"attribution patching ({result.method})", "note": note,
              "tabs": [{"label": kind, "views": [attribution_grid(result, kind, exact)]} for kind in result.kinds]}]
    table = verification_table(result)
    return views + ([table] if table else [])


def patch_page_views(exact, estimates: list, comparison: dict | None = None, vocab=None) -> list[dict]:
    """`fusedlens patch`'s page: a tab per method (exact, atp, atp*), and the estimates against the exact grid."""
    effects = None if exact is None else {k: v - exact.corrupted for k, v in exact.values.items()}
    tabs = ([{"label": "exact", "views": patch_views(exact, vocab)}] if exact is not None else []) + \
        [{"label": e.method, "views": attribution_views(e, vocab, effects)} for e in estimates]
    views = tabs[0]["views"] if len(tabs) == 1 else [{"type": "tabs", "tabs": tabs}]
    if comparison:
        views = views + [{"type": "table", "title": "estimates against the exact grid",
                          "head": ["method", "kind", "nodes", "Pearson", "Spearman", "true top", "missed"],
                          "rows": [[m, k, c["nodes"], c["pearson"], c["spearman"], c["top"], len(c["missed"])]
                                   for m, by_kind in comparison.items() for k, c in by_kind.items()]}]
    return views
