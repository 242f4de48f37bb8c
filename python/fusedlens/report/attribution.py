"""Attribution patching (intervene.attribution) as a table, a heatmap per node kind, and, beside the
exact grid, a scatter of estimate against exact effect per kind with the top nodes it missed."""
from __future__ import annotations

import os

import torch

from ..core.files import write_json
from .common import pyplot


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
