"""An activation-patching run (intervene.patching.patch) as a table and the causal-tracing picture:
one layers × positions heatmap of the restored fraction per kind (heads: their sum over positions
as layers × heads); and the interactive pages of patching, attention knockout and patchscopes."""
from __future__ import annotations

import os

from ..core.files import write_json
from .common import pyplot
from .page import array


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


# ---- the interactive pages (report/page.py draws them) ----
def layer_labels(kind: str, n: int) -> list[str]:
    """Row labels of a grid: resid's first row is the embedding."""
    return ["embed" if kind == "resid" and i == 0 else str(i - (kind == "resid")) for i in range(n)]


def grid_labels(kind: str, grid) -> list[str]:
    """Labels of the rows of a [layers(, units), positions] grid as drawn: a [layers · units] grid's rows
    are "layer.unit"."""
    layers = layer_labels(kind, grid.shape[0])
    return layers if grid.dim() == 2 else [f"{layer}.{u}" for layer in layers for u in range(grid.shape[1])]


def position_heatmap(kind: str, rows: list[str], columns: list[str], row_title: str, layers: list[dict],
                     tips: dict, **extra) -> dict:
    """A kind's heatmap over (layer(.unit), position), the prompt's tokens as columns (patching's and
    attribution patching's grids)."""
    return {"type": "heatmap", **extra, "rows": rows, "cols": columns, "row_title": row_title, "col_title": "position",
            "corner": f"{kind} \\ position", "page": 48, "tall_cols": True, "show_values": True, "value_digits": 2,
            "layers": layers, "tips": tips}


def patch_grid(kind: str, restored, values, columns: list[str], metric: str) -> dict:
    """One kind's (layer, position) heatmap of the restored fraction; the tooltip adds the patched metric."""
    labels = grid_labels(kind, restored)
    flat_r, flat_v = restored.reshape(len(labels), -1), values.reshape(len(labels), -1)
    lim = max(1.0, float(flat_r.nan_to_num().abs().max()))
    return position_heatmap(kind, labels, columns, "head" if restored.dim() == 3 else "layer",
                            [{"name": "restored fraction", "values": array(flat_r), "scale": "diverging", "vmin": -lim,
                              "vmax": lim}], {f"{metric} patched": array(flat_v)})


def patch_views(result, vocab=None) -> list[dict]:
    """A tab per kind: the restored fraction over (layer, position), the prompt's tokens as columns."""
    columns = [result.tokens[p] for p in result.positions]
    tabs = [{"label": kind, "views": [dict(patch_grid(kind, result.restored[kind], result.values[kind], columns,
                                                      result.metric),
                                           title=f"{kind}: restored fraction of {result.metric}")]}
            for kind in result.kinds]
    note = (f"{result.metric}: clean {result.clean:.4f}, corrupted {result.corrupted:.4f}; restored = (patched − "
            "corrupted) / (clean − corrupted), 1 = the clean run's; hover a cell for its patched metric")
    return [{"type": "tabs", "title": "activation patching: the clean state put into the corrupted run",
             "note": note, "tabs": tabs}]


def knockout_views(result, vocab=None) -> list[dict]:
    """The metric's drop per window of blocks whose attention edges were cut; a click shows the window's numbers."""
    labels = [f"blocks {lo}–{hi}" for lo, hi in result.windows]
    where = ""
    if result.tokens:
        where = " (" + ", ".join(f"{p} {result.tokens[p]!r}" for p in result.queries) + " → " + \
                ", ".join(f"{p} {result.tokens[p]!r}" for p in result.keys) + ")"
    details = {lab: {"title": f"edges cut in {lab}", "tables": [{"title": result.metric_name, "head": ["", "value"],
                                                                 "rows": [["without knockout", result.base],
                                                                          ["with the cut", float(m)],
                                                                          ["drop", float(d)]]}]}
               for lab, m, d in zip(labels, result.metric.tolist(), result.drop.tolist())}
    return [{"type": "bars", "title": f"attention knockout: drop of {result.metric_name} per window of blocks",
             "note": f"edges {result.queries} → {result.keys}{where} cut; without knockout {result.base:.4f}; "
                     "click a window for its numbers", "labels": labels, "values": array(result.drop),
             "details": details}]


def patchscope_views(result, vocab=None) -> list[dict]:
    """Per source layer: the lens top-1 at the patched position at each target layer, and the generation."""
    sites = len(result.lens_top1[0])
    cells = [t for row in result.lens_top1 for t in row]
    same = [float(t.strip() == result.source_token.strip()) for t in cells]
    meta = result.meta
    grid = {"type": "heatmap", "title": "the target run's lens top-1 at the patched position",
            "note": f"source {meta.get('source')!r}, token {result.source_token!r} (position "
                    f"{meta.get('source_position')}); written at target position {meta.get('target_position')}; "
                    "colour: the top-1 is the source token", "rows": [str(x) for x in result.source_layers],
            "cols": [str(j) for j in range(sites)], "row_title": "source layer", "col_title": "target layer",
            "corner": "source \\ target", "cell_text": cells, "cell_chars": 8,
            "layers": [{"name": "top-1 is the source token", "values": array(same), "vmin": 0, "vmax": 1}]}
    table = {"type": "table", "title": "generations",
             "head": ["source layer", "target layer", "lens top-1", "generation"],
             "rows": [[s, t, {"t": top[t]}, gen.replace("\n", "↵")] for s, t, gen, top in
                      zip(result.source_layers, result.target_layers, result.generations, result.lens_top1)]}
    return [table, grid]
