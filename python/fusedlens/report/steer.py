"""Steering results (steer.generate, steer.scan) as text and pictures: generations side by side, the
scan's table, and its two heatmaps (sites × coefficients): perplexity ratio to the unsteered run and
mean projection at the read site."""
from __future__ import annotations

import itertools
import math
import os
import textwrap

from ..core.files import write_json
from .common import pyplot
from .page import array


def side_by_side(left: str, right: str, titles=("without", "with"), width: int = 48) -> str:
    """Two texts in two wrapped columns."""
    cols = [textwrap.wrap(t.replace("\n", " ⏎ "), width) or [""] for t in (left, right)]
    lines = [f"{titles[0]:<{width}} | {titles[1]}", f"{'-' * width}-+-{'-' * width}"]
    for a, b in itertools.zip_longest(*cols, fillvalue=""):
        lines.append(f"{a:<{width}} | {b}")
    return "\n".join(lines)


def format_generation(result) -> str:
    head = (f"prompt {result.prompt!r}; {result.coef:+g} x vector (norm {result.meta.get('vector_norm', 0):.3g}) at "
            f"{result.site}, positions {result.meta.get('positions')}; "
            + ("greedy" if not result.meta.get("sample") else f"sampled, seed {result.meta.get('seed')}"))
    return head + "\n" + side_by_side(result.unsteered, result.steered, ("unsteered", f"steered ({result.coef:+g})"))


def format_scan_table(result) -> str:
    coefs = result.coefs
    lines = [f"held-out perplexity unsteered {result.base_ppl:.3f} ({result.meta.get('predicted_tokens')} tokens); "
             f"mean projection at {result.read_site}: {result.base_projection:+.3f}",
             "perplexity ratio to unsteered / mean projection at the read site:",
             f"{'site':>9} " + " ".join(f"{c:>16g}" for c in coefs)]
    for i, s in enumerate(result.sites):
        lines.append(f"{s:>9} " + " ".join(f"{float(result.ppl_ratio[i, j]):>7.3f} / {float(result.projection[i, j]):>+6.1f}"
                                           for j in range(len(coefs))))
    return "\n".join(lines)


def format_scan_samples(result, max_chars: int = 110) -> str:
    out = []
    for p, prompt in enumerate(result.prompts):
        out.append(f"prompt {prompt!r}\n  unsteered: {_one_line(result.base_samples[p], max_chars)}")
        for i, s in enumerate(result.sites):
            for j, c in enumerate(result.coefs):
                out.append(f"  {s:>9} {c:+6g}: {_one_line(result.samples[p][i][j], max_chars)}")
    return "\n".join(out)


def _one_line(text: str, n: int) -> str:
    t = text.replace("\n", " ⏎ ")
    return repr(t if len(t) <= n else t[:n - 1] + "…")


def plot_scan(result, path: str, title: str = "") -> str:
    """Heatmaps: perplexity ratio (log colour scale centred on 1) and mean projection at the read site."""
    import matplotlib.colors as mcolors
    import numpy as np

    plt = pyplot()
    ratio, proj = result.ppl_ratio.numpy(), result.projection.numpy()
    S, C = ratio.shape
    fig, axes = plt.subplots(1, 2, figsize=(3.5 + 1.5 * C, 1.6 + 0.42 * S))
    span = max(float(np.abs(np.log(ratio)).max()), 1e-3)
    norms = (mcolors.LogNorm(vmin=float(np.exp(-span)), vmax=float(np.exp(span))),
             mcolors.TwoSlopeNorm(vcenter=result.base_projection, vmin=min(float(proj.min()), result.base_projection - 1e-6),
                                  vmax=max(float(proj.max()), result.base_projection + 1e-6)))
    titles = (f"perplexity / unsteered ({result.base_ppl:.2f})",
              f"mean projection at {result.read_site} (unsteered {result.base_projection:+.2f})")
    for ax, data, norm, t, fmt in zip(axes, (ratio, proj), norms, titles, ("{:.2f}", "{:+.1f}")):
        im = ax.imshow(data, cmap="RdBu_r", norm=norm, aspect="auto")
        ax.set_xticks(range(C))
        ax.set_xticklabels([f"{c:g}" for c in result.coefs])
        ax.set_yticks(range(S))
        ax.set_yticklabels(result.sites)
        ax.set_xlabel("coefficient")
        ax.set_title(t, fontsize=9)
        for i in range(S):
            for j in range(C):
                dark = abs(float(norm(data[i, j])) - 0.5) > 0.3  # white text on the saturated ends
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title or "steering scan", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_scan_outputs(result, out_dir: str, prefix: str = "steer_scan", title: str = "") -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{prefix}.json")
    write_json(result.to_dict(), json_path)
    png = plot_scan(result, os.path.join(out_dir, f"{prefix}.png"), title)
    txt = os.path.join(out_dir, f"{prefix}.txt")
    with open(txt, "w") as f:
        f.write(format_scan_table(result) + "\n\n" + format_scan_samples(result) + "\n")
    return [json_path, png, txt]


# ---- the interactive page (report/page.py draws it) ----
def _parted_at(a: list[int], b: list[int]) -> int | None:
    """The first generated token where two runs differ (None: the same tokens)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def generation_views(result) -> list[dict]:
    """The unsteered and the steered continuation side by side, and the run's settings."""
    at = _parted_at(result.unsteered_ids, result.steered_ids)
    decoding = "greedy" if not result.meta.get("sample") else f"sampled, seed {result.meta.get('seed')}"
    return [{"type": "samples", "title": f"prompt: {result.prompt}",
             "columns": [{"title": "unsteered", "texts": [result.unsteered]},
                         {"title": f"steered: {result.coef:+g} × v at {result.site}", "texts": [result.steered]}],
             "note": "the same tokens: the vector changed nothing here" if at is None else
             f"the two continuations part at generated token {at}; {decoding}"},
            {"type": "table", "title": "settings", "head": ["site", "coefficient", "|v|", "positions", "decoding",
                                                            "tokens"],
             "rows": [[result.site, result.coef, result.meta.get("vector_norm"), str(result.meta.get("positions")),
                       decoding, len(result.steered_ids)]]}]


def steer_scan_views(result) -> list[dict]:
    """The sites × coefficients grids of perplexity ratio and read-site projection (click a cell: its samples
    beside the unsteered ones), and every cell's samples side by side, one tab per site."""
    ratio, proj = result.ppl_ratio.double(), result.projection.double()
    cols = [f"{c:+g}" for c in result.coefs]
    details = {f"{i},{j}": {"title": f"{s}, coefficient {c:+g}: perplexity × {float(ratio[i, j]):.3f}, projection "
                                     f"{float(proj[i, j]):+.3f}",
                            "tables": [{"title": "samples", "head": ["prompt", "unsteered", "steered"],
                                        "rows": [[p, result.base_samples[k], result.samples[k][i][j]]
                                                 for k, p in enumerate(result.prompts)]}]}
               for i, s in enumerate(result.sites) for j, c in enumerate(result.coefs)}
    common = {"type": "heatmap", "rows": result.sites, "cols": cols, "row_title": "site", "col_title": "coefficient",
              "corner": "site \\ c", "details": details, "tips": {"perplexity": array(result.ppl.double()),
                                                                  "perplexity ratio": array(ratio),
                                                                  f"projection at {result.read_site}": array(proj)}}
    views = [dict(common, title="held-out perplexity / unsteered (click a cell for its samples)",
                  cell_text=[f"{float(v):.2f}" for v in ratio.reshape(-1)],
                  layers=[{"name": "log₂ perplexity ratio", "values": array(ratio.log2()), "scale": "diverging"}],
                  note=f"unsteered perplexity {result.base_ppl:.3f} over {result.meta.get('predicted_tokens')} "
                       "tokens; red: the vector makes the text less likely"),
             dict(common, title=f"mean projection at {result.read_site} onto the read direction", show_values=True,
                  layers=[{"name": f"projection − unsteered ({result.base_projection:+.3f})",
                           "values": array(proj - result.base_projection), "scale": "diverging"}])]
    if not all(math.isfinite(float(v)) for v in ratio.reshape(-1)):
        views[0]["note"] += "; grey: no finite perplexity"
    views.append({"type": "tabs", "title": "samples per site: unsteered and every coefficient side by side",
                  "tabs": [{"label": s, "views": [{"type": "samples", "columns": [
                      {"title": "unsteered", "texts": list(result.base_samples)}] + [
                      {"title": f"{c:+g}", "texts": [result.samples[k][i][j] for k in range(len(result.prompts))]}
                      for j, c in enumerate(result.coefs)], "note": "prompts: " + " | ".join(result.prompts)}]}
                           for i, s in enumerate(result.sites)]})
    return views
