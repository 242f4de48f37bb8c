"""An activation-patching run (intervene.patching.patch) as a table and the causal-tracing picture:
one layers × positions heatmap of the restored fraction per kind (heads: their sum over positions
as layers × heads)."""
from __future__ import annotations

import os

from ..core.files import write_json
from .common import pyplot


def format_patch_table(result, n: int = 10) -> str:
    lines = [f"metric {result.metric}: clean {result.clean:.4f}, corrupted {result.corrupted:.4f} "
             f"({result.meta.get('cells')} patches in {result.meta.get('forwards')} forwards)"]
    for kind in result.kinds:
        r = result.restored[kind]
        flat = [(float(v), idx) for idx, v in zip(_indices(r.shape), r.reshape(-1).tolist()) if v == v]
        flat.sort(key=lambda x: -abs(x[0]))
        cells = []
        for v, idx in flat[:n]:
            layer = idx[0] - (kind == "resid")
            where = f"{'embed' if layer < 0 else f'{kind}.{layer}'}" + (f".{idx[1]}" if kind == "head" else "")
            pos = result.positions[idx[-1]]
            cells.append(f"{where}@{pos} {result.tokens[pos]!r} {v:+.2f}")
        lines.append(f"{kind}: " + ", ".join(cells))
    return "\n".join(lines)


def _indices(shape):
    import itertools

    return list(itertools.product(*(range(s) for s in shape)))


def plot_patch(result, path: str, title: str = "") -> str:
    plt = pyplot()
    kinds = result.kinds
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 + 2.6 * len(kinds), 0.5 + 0.18 * result.restored[kinds[0]].shape[0] + 1.5),
                             squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        r = result.restored[kind]
        if kind == "head":
            r = r.sum(-1)  # layers x heads, summed over positions
        im = ax.imshow(r.numpy(), cmap="Purples" if kind != "head" else "RdBu", aspect="auto",
                       vmin=min(0.0, float(r.nan_to_num().min())), vmax=max(1.0, float(r.nan_to_num().max())))
        if kind == "head":
            ax.set_xlabel("head")
        else:
            ax.set_xticks(range(len(result.positions)))
            ax.set_xticklabels([result.tokens[p] for p in result.positions], rotation=90, fontsize=7)
        rows = r.shape[0]
        ax.set_yticks(range(0, rows, max(1, rows // 10)))
        if kind == "resid":
            ax.set_yticklabels(["embed" if i == 0 else str(i - 1) for i in range(0, rows, max(1, rows // 10))])
        ax.set_ylabel("layer")
        ax.set_title(f"{kind}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{title}restored fraction of {result.metric} (clean {result.clean:.2f}, corrupted "
                 f"{result.corrupted:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_knockout(result, path: str) -> str:
    """The metric's drop per window of blocks whose attention edges were cut."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    centres = [(lo + hi) / 2 for lo, hi in result.windows]
    ax.bar(centres, result.drop.numpy(), width=0.8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("centre of the window of blocks")
    ax.set_ylabel(f"drop of {result.metric_name}")
    lo, hi = result.windows[0]
    ax.set_title(f"attention knockout {result.queries} -> {result.keys}, windows of {hi - lo + 1} blocks "
                 f"(no knockout: {result.base:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_patch_outputs(result, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "patch.json")
    write_json(result.to_dict(), json_path)
    png = plot_patch(result, os.path.join(out_dir, "patch.png"))
    table = os.path.join(out_dir, "patch.txt")
    with open(table, "w") as f:
        f.write(format_patch_table(result) + "\n")
    return [json_path, png, table]
