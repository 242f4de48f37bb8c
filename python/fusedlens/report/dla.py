"""A direct-logit-attribution run (dla.dla) as a table, JSON and two pictures: a layer × head heatmap
of the heads' mean direct effect and a layer × {attention, MLP} bar chart, plus the tokens the top
components promote and suppress; and as an interactive page (dla_views: the same, with each head's and
block's extreme tokens on a click and the per-source split over the prompt's tokens)."""
from __future__ import annotations

import os

from ..core.files import write_json
from .common import pyplot
from .page import array


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


# ---- the interactive page (report/page.py draws it) ----
SHOWN_PROMPTS = 4  # prompts whose attributed position a page details (extremes, split by source)


def default_kind(result) -> str:
    """The kind the command reports: the logit difference, else the answer, else the final top-1."""
    return next(k for k in ("diff", "answer", "top1") if k in result.contrib)


def shown_rows(result, kind: str) -> list[int]:
    """Each prompt's last row with a `kind` target, for the first SHOWN_PROMPTS prompts."""
    last = {}
    for row in result.rows_of(kind).tolist():
        last[int(result.batch_index[row])] = row
    return [last[p] for p in sorted(last)][:SHOWN_PROMPTS]


def _where(result, row: int, vocab) -> str:
    return f"prompt {int(result.batch_index[row])}, position {int(result.position[row])} " \
           f"{vocab.text(int(result.input_ids[row]))!r}"


def extreme_tables(result, component: str, rows: list[int], kind: str, vocab) -> list[dict]:
    """One table per row: the component's most promoted and suppressed tokens (its direct logit of each)."""
    c, e, j = result.extreme_components.index(component), result.extremes, result.index(component)
    out = []
    for row in rows:
        top = zip(e.top_ids[c, row].tolist(), e.top_logits[c, row].tolist())
        bottom = zip(e.bottom_ids[c, row].tolist(), e.bottom_logits[c, row].tolist())
        effect = float(result.contrib[kind][j, row])
        out.append({"title": f"{_where(result, row, vocab)}: effect on {kind} {effect:+.4f}",
                    "head": ["#", "promoted", "logit", "suppressed", "logit"],
                    "rows": [[i + 1, {"t": vocab.text(a)}, av, {"t": vocab.text(b)}, bv]
                             for i, ((a, av), (b, bv)) in enumerate(zip(top, bottom))]})
    return out


def _details(result, names: dict, kind: str, rows: list[int], vocab) -> dict:
    """key -> the click details of component names[key] (only components whose extremes were computed)."""
    if result.extremes is None:
        return {}
    mean = result.mean(kind)
    return {key: {"title": f"{name}: mean direct effect on {kind} {float(mean[result.index(name)]):+.4f}; "
                           "the tokens it promotes and suppresses most (full vocabulary)",
                  "tables": extreme_tables(result, name, rows, kind, vocab)}
            for key, name in names.items() if name in result.extreme_components}


def head_heatmap(m, title: str, value_name: str, **extra) -> dict:
    """A [layers, heads] matrix of mean direct effects as a layer × head heatmap (diverging colours)."""
    n_layers, n_heads = m.shape
    return {"type": "heatmap", "title": title, "rows": [str(i) for i in range(n_layers)],
            "cols": [str(h) for h in range(n_heads)], "row_title": "layer", "col_title": "head",
            "corner": "layer \\ head", "show_values": True,
            "layers": [{"name": value_name, "values": array(m), "scale": "diverging"}], **extra}


def head_view(result, kind: str, rows: list[int], vocab) -> dict:
    """The layer × head heatmap of the heads' mean direct effect; a click shows the head's extreme tokens."""
    m = result.head_matrix(kind)
    n_layers, n_heads = m.shape
    names = {f"{i},{h}": f"head.{i}.{h}" for i in range(n_layers) for h in range(n_heads)}
    return head_heatmap(m, f"each head's mean direct effect on {kind}", f"mean direct effect on {kind}",
                        value_digits=2, details=_details(result, names, kind, rows, vocab),
                        note="click a head for the tokens it promotes and suppresses" if result.extremes is not None
                        else "no extreme tokens (k=0)")


def block_view(result, kind: str, rows: list[int], vocab) -> dict:
    """embed, attn.i, mlp.i, ..., bias as signed bars (they sum to the logit); a click shows extreme tokens."""
    n_layers = sum(n.startswith("attn.") for n in result.components)
    names = ["embed"] + [f"{p}.{i}" for i in range(n_layers) for p in ("attn", "mlp")] + ["bias"]
    mean = result.mean(kind)
    return {"type": "bars", "title": f"each block's mean direct effect on {kind} (they sum to the logit)",
            "labels": names, "values": array(mean[[result.index(n) for n in names]]),
            "details": _details(result, {n: n for n in names}, kind, rows, vocab)}


def source_views(result, kind: str, rows: list[int], vocab) -> list[dict]:
    """Per shown prompt, its tokens coloured by each split head's effect through each source position."""
    if not result.sources:
        return []
    panes = []
    for row in rows:
        prompt, pos = int(result.batch_index[row]), int(result.position[row])
        ids = result.input_ids[result.batch_index == prompt]
        panes.append({"label": f"prompt {prompt}", "views": [{
            "type": "tokens", "tokens": [vocab.text(i) for i in ids.tolist()], "select_label": "head",
            "note": f"the marked token is the attributed position ({_where(result, row, vocab)})",
            "series": [{"name": head, "values": array(by_kind[kind][row, :ids.numel()]), "scale": "diverging",
                        "mark": pos} for head, by_kind in result.sources.items()]}]})
    title = f"each chosen head's effect on {kind}, split by the source position it reads"
    return [dict(panes[0]["views"][0], title=title) if len(panes) == 1 else
            {"type": "tabs", "title": title, "tabs": panes}]


def dla_views(result, vocab, kind: str | None = None, n: int = 15) -> list[dict]:
    """The page of a DLA result for one target kind: heads, blocks, top components, the per-source split."""
    kind = kind or default_kind(result)
    rows = shown_rows(result, kind)
    err = result.decomposition_error(kind)
    prompts = result.batch_index[result.rows_of(kind)].unique().numel()
    shown = f"; clicks show the first {len(rows)} of {prompts} prompts" if prompts > len(rows) else ""
    summary = {"type": "table", "title": f"the {n} components with the largest |mean effect| on {kind}",
               "note": f"{result.rows_of(kind).numel()} attributed position(s){shown}; sum check (largest |sum − "
                       "logit| / max(1, |logit|)): " + ", ".join(f"{k} {v:.1e}" for k, v in err.items()),
               "head": ["component", "mean direct effect"], "rows": [[c, v] for c, v in result.top(kind, n)]}
    views = [head_view(result, kind, rows, vocab)] if any(c.startswith("head.") for c in result.components) else []
    return views + [block_view(result, kind, rows, vocab), summary] + source_views(result, kind, rows, vocab)
