"""A direct-logit-attribution run (dla.dla) as a table, JSON and two pictures: a layer × head heatmap
of the heads' mean direct effect and a layer × {attention, MLP} bar chart, plus the tokens the top
components promote and suppress."""
from __future__ import annotations

import os

from ..core.files import write_json
from .common import pyplot


def format_dla_table(result, kind: str, n: int = 10, tokenizer=None) -> str:
    """The decomposition check, the top components by |mean effect| and their extreme tokens."""
    rows = result.rows_of(kind)
    err = result.decomposition_error(kind)
    lines = [f"direct logit attribution to {kind!r} over {rows.numel()} position(s); model's mean logit "
             f"{float(result.logits[kind][rows].double().mean()):.3f}",
             "sum check (largest |sum - logit| / max(1, |logit|)): "
             + ", ".join(f"{k} {v:.1e}" for k, v in err.items()), "",
             f"{'component':>14} {'mean effect':>12}   promoted / suppressed (first attributed position)"]
    first = int(rows[0])
    for name, value in result.top(kind, n):
        extra = ""
        if result.extremes is not None and name in result.extreme_components and tokenizer is not None:
            e = result.extreme_tokens(name, first, tokenizer)
            extra = "  + " + " ".join(repr(t) for t, _, _ in e["promoted"][:5]) + \
                "  - " + " ".join(repr(t) for t, _, _ in e["suppressed"][:5])
        lines.append(f"{name:>14} {value:>12.4f}{extra}")
    for head, by_kind in result.sources.items():
        split = by_kind[kind][first][:int(result.position[first]) + 1]
        order = split.abs().argsort(descending=True)[:5].tolist()
        where = [i for i in range(result.input_ids.numel()) if int(result.batch_index[i]) == int(result.batch_index[first])]
        words = [result.tokens[where[s]] if result.tokens else str(s) for s in order]
        lines.append(f"{head} by source position (first attributed position): "
                     + ", ".join(f"{w!r}@{s} {float(split[s]):+.3f}" for w, s in zip(words, order)))
    return "\n".join(lines)


def plot_head_matrix(m, path: str, title: str) -> None:
    """A layer × head heatmap of mean effects (diverging around 0)."""
    plt = pyplot()
    lim = float(abs(m).max()) or 1.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * m.shape[1], 1.2 + 0.22 * m.shape[0]))
    im = ax.imshow(m, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(m.shape[1]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mean logit contribution")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_block_bars(b, path: str, title: str) -> None:
    """Per layer, the attention's and the MLP's mean effect side by side; b [layers, 2]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = range(b.shape[0])
    ax.bar([i - 0.2 for i in x], b[:, 0], width=0.4, label="attention")
    ax.bar([i + 0.2 for i in x], b[:, 1], width=0.4, label="MLP")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean logit contribution")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_dla(result, kind: str, path_heads: str, path_blocks: str, title: str = "") -> list[str]:
    """The heatmap (when heads were captured) and the bar chart; returns the paths written."""
    written = []
    if any(n.startswith("head.") for n in result.components):
        plot_head_matrix(result.head_matrix(kind).numpy(), path_heads, f"{title}direct effect of each head on {kind}")
        written.append(path_heads)
    mean = result.mean(kind)
    plot_block_bars(result.block_matrix(kind).numpy(), path_blocks,
                    f"{title}direct effect of each block on {kind} (embed {mean[0]:.2f}, "
                    f"bias {mean[result.index('bias')]:.2f})")
    written.append(path_blocks)
    return written


def write_dla_outputs(result, out_dir: str, kind: str, tokenizer=None, n: int = 10) -> list[str]:
    """dla.json, dla_heads.png, dla_blocks.png and dla.txt (the table) in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "dla.json")
    write_json(result.to_dict(), json_path)
    pictures = plot_dla(result, kind, os.path.join(out_dir, "dla_heads.png"), os.path.join(out_dir, "dla_blocks.png"))
    table = os.path.join(out_dir, "dla.txt")
    with open(table, "w") as f:
        f.write(format_dla_table(result, kind, n, tokenizer) + "\n")
    return [json_path, *pictures, table]
