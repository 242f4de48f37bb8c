"""Reading vectors as a table and pictures: held-out accuracy and AUROC against depth for each kind of
direction, and the LAT-style scan (tokens × sites, coloured by the projection). Takes the plain dicts
and tensors `DirectionsResult.to_dict()` / `.scan()` give; imports no analysis."""
from __future__ import annotations

from .common import pyplot, token_strings
from .page import array

KIND_LABELS = {"mean_diff": "difference of means", "pca": "PCA of paired differences (RepE)",
               "lda": "Fisher / LDA (ridge)"}


def _fmt(v) -> str:
    return "    -" if v is None else f"{v:.3f}"


def format_directions_table(d: dict) -> str:
    """One line per site: held-out accuracy and AUROC of each kind, the class-mean distance, the LDA rank."""
    kinds = d["kinds"]
    head = f"{'site':>9} " + " ".join(f"{k[:9] + ' acc':>13} {'AUROC':>6}" for k in kinds) + \
        f" {'|mu+ - mu-|':>11} {'PCA var':>7} {'rank':>5}"
    lines = [f"held-out accuracy (sign of v·x − midpoint) and AUROC; {d.get('n_pairs_train')} training / "
             f"{d.get('n_pairs_heldout')} held-out pairs, position {d['position']}, LDA ridge {d['lda_ridge']:g}",
             head, "-" * len(head)]
    for row in d["sites"]:
        line = f"{row['site']:>9} "
        line += " ".join(f"{_fmt(row.get(k, {}).get('accuracy')):>13} {_fmt(row.get(k, {}).get('auroc')):>6}"
                         for k in kinds)
        pv = row.get("pca_explained")
        line += f" {row['mean_diff_norm']:>11.3f} {('-' if pv is None else f'{pv:.3f}'):>7} {row['cov_rank']:>5}"
        lines.append(line)
    return "\n".join(lines)


def plot_directions(d: dict, path: str, title: str | None = None) -> None:
    """Two panels against depth: held-out accuracy and AUROC, one line per kind."""
    plt = pyplot()
    sites = [r["site"] for r in d["sites"]]
    x = list(range(len(sites)))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), sharex=True)
    for ax, metric, name in ((axes[0], "accuracy", "held-out accuracy"), (axes[1], "auroc", "held-out AUROC")):
        for i, k in enumerate(d["kinds"]):
            vals = [r.get(k, {}).get(metric) for r in d["sites"]]
            if any(v is not None for v in vals):
                ax.plot(x, [float("nan") if v is None else v for v in vals], marker="o", markersize=3,
                        color=f"C{i}", label=KIND_LABELS.get(k, k))
        ax.axhline(0.5, color="black", lw=0.6, ls=":", label="chance")
        ax.set_ylabel(name)
        ax.set_xlabel("site (0 = embedding output, i + 1 = block i)")
        ax.set_ylim(0.3, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    step = max(1, len(sites) // 10)
    for ax in axes:
        ax.set_xticks(x[::step])
        ax.set_xticklabels([s.replace("resid.", "") for s in sites[::step]])
    fig.suptitle(title or f"reading vectors, {d.get('model', '')}: {d.get('n_pairs_train')} training / "
                          f"{d.get('n_pairs_heldout')} held-out pairs, position {d['position']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scan(scan: dict, tokenizer, path: str, title: str | None = None, limit: float = 3.0) -> None:
    """Tokens (columns) × sites (rows, embedding at the bottom) coloured by (v·h − midpoint) / half gap:
    +1 = the positive training mean, −1 = the negative one; a diverging map centred at the midpoint."""
    plt = pyplot()
    from matplotlib.colors import TwoSlopeNorm

    vals = scan["values"].double().numpy()
    tokens = [t.replace("\n", "\\n") for t in token_strings(tokenizer, scan["ids"])]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * len(tokens) + 2.5), 0.16 * len(scan["sites"]) + 2.4))
    im = ax.imshow(vals, aspect="auto", origin="lower", cmap="RdBu_r",
                   norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit), interpolation="nearest")
    ax.set_xticks(range(len(tokens)))
    ax.set_xticklabels(tokens, rotation=60, ha="right", fontsize=8)
    step = max(1, len(scan["sites"]) // 15)
    ax.set_yticks(range(0, len(scan["sites"]), step))
    ax.set_yticklabels(scan["sites"][::step], fontsize=8)
    cb = fig.colorbar(im, ax=ax, extend="both")
    cb.set_label("(v·h − midpoint) / half gap: +1 = positive mean")
    ax.set_title(title or f"LAT scan, {KIND_LABELS.get(scan['kind'], scan['kind'])}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the interactive page (report/page.py draws it) ----
SCAN_LIMIT = 2.0  # colour saturates at twice the half gap: past either class mean


def directions_views(d: dict, scans=(), vocab=None) -> list[dict]:
    """Held-out accuracy and AUROC per site of each kind (lines), the per-site facts (table), and each scan
    of a text as tokens coloured by the projection at a chosen site (the best site first) and as a
    sites × tokens grid. d: `DirectionsResult.to_dict()`; scans: `DirectionsResult.scan()` outputs."""
    x = [r["site"] for r in d["sites"]]
    chance = {"name": "chance", "y": [0.5] * len(x), "colour": "#999"}
    views = [{"type": "lines", "title": f"held-out {label} per site", "x": x, "ymin": 0, "ymax": 1,
              "series": [{"name": KIND_LABELS.get(k, k), "y": [r.get(k, {}).get(metric) for r in d["sites"]]}
                         for k in d["kinds"]] + [chance]}
             for metric, label in (("accuracy", "accuracy"), ("auroc", "AUROC"))]
    views[0]["note"] = (f"{d.get('n_pairs_train')} training / {d.get('n_pairs_heldout')} held-out pairs, position "
                        f"{d['position']}; accuracy: the sign of v·x − the training midpoint")
    views.append({"type": "table", "title": "per site", "head": ["site", "rows +", "rows −", "|μ+ − μ−|",
                                                                 "PCA explained", "covariance rank"],
                  "rows": [[r["site"], r.get("n_pos"), r.get("n_neg"), r.get("mean_diff_norm"), r.get("pca_explained"),
                            r.get("cov_rank")] for r in d["sites"]]})
    for scan in scans:
        views += scan_views(d, scan, vocab)
    return views


def scan_views(d: dict, scan: dict, vocab) -> list[dict]:
    """One LAT scan: (v·h − midpoint) / half gap per token (+1 = the positive class mean, −1 the negative)."""
    kind, sites = scan["kind"], scan["sites"]
    tokens = [vocab.text(i) for i in vocab.use(scan["ids"])]
    acc = [r.get(kind, {}).get("accuracy") for r in d["sites"]]
    best = max(range(len(sites)), key=lambda i: (acc[i] is not None, acc[i] or 0, -i))
    label = KIND_LABELS.get(kind, kind)
    values = scan["values"].double()
    return [{"type": "tokens", "title": f"scan with {label}: the text at one site", "tokens": tokens,
             "select_label": "site", "selected": best,
             "series": [{"name": s, "values": array(values[i]), "scale": "diverging", "vmin": -SCAN_LIMIT,
                         "vmax": SCAN_LIMIT} for i, s in enumerate(sites)],
             "note": f"red: towards the positive class mean (+1), blue: the negative (−1); shown first: "
                     f"{sites[best]}, the best held-out accuracy"},
            {"type": "heatmap", "title": f"scan with {label}: sites × tokens", "rows": sites, "cols": tokens,
             "row_order": "up", "row_title": "site", "col_title": "token", "corner": "site \\ token", "page": 40,
             "show_values": True,
             "layers": [{"name": "(v·h − midpoint) / half gap", "values": array(values), "scale": "diverging",
                         "vmin": -SCAN_LIMIT, "vmax": SCAN_LIMIT},
                        {"name": "v·h − midpoint", "values": array(scan["raw"].double()), "scale": "diverging"}]}]
