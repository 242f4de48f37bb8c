"""Per-layer tables and pictures of lens results (logit or tuned): the table, layer curves, the grid."""
from __future__ import annotations

import math
import warnings

import torch

from .common import pyplot, token_strings
from .page import array, probabilities

COLUMNS = (("kl_to_final", "KL(final‖layer) nats"), ("top1_agreement", "top-1 = final top-1"),
           ("next_token_accuracy", "next-token accuracy"), ("entropy", "entropy nats"))


def _probe_columns(row: dict) -> list[tuple[str, str]]:
    """(key, label) of each probe's held-out R² in a summary row (corpus runs with --probe)."""
    return [(k, f"probe R² held-out ({k[len('probe_'):-len('_r2_heldout')]})") for k in row
            if k.startswith("probe_") and k.endswith("_r2_heldout")]


def format_table(rows: list[dict]) -> str:
    keys = [k for k, _ in COLUMNS if k in rows[0]] + [k for k in ("target_logprob", "target_rank_median") if k in rows[0]]
    keys += [k for k, _ in _probe_columns(rows[0])]
    header = f"{'site':>9} " + " ".join(f"{k:>19}" for k in keys)
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['site']:>9} " + " ".join(f"{r[k]:>19.4f}" for k in keys))
    return "\n".join(lines)


def plot_layer_curves(rows: list[dict], path: str, title: str = "logit lens") -> None:
    plt = pyplot()
    present = [(k, label) for k, label in COLUMNS if k in rows[0]] + _probe_columns(rows[0])
    x = list(range(len(rows)))
    ncols = 2
    nrows = math.ceil(len(present) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(11, 3.4 * nrows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, present):
        ax.plot(x, [r[key] for r in rows], marker="o", markersize=3)
        ax.set_title(label)
        ax.set_xlabel("site (0 = embedding)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell_text(text: str, width: int = 8) -> str:
    """Visible, short, and safe from matplotlib's $…$ mathtext."""
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")
    return text if len(text) <= width else text[:width - 1] + "…"


def plot_lens_grid(result, tokenizer, path: str, seq: int = 0, max_positions: int = 32, title: str | None = None) -> None:
    """The classic logit-lens picture of one sequence of a LensResult, as two panels.

    Rows are sites (embedding at the bottom, final layer on top), columns the first
    `max_positions` positions (input token below, the true next token above); each
    cell shows that site's top-1 token, bold where it is the true next token.
    Top panel colour: the top-1's probability exp(top1_logit − lse); bottom panel
    colour: the rank of the final layer's top-1 at that site (0 = top; log scale).
    """
    from matplotlib.colors import LogNorm, Normalize

    if isinstance(max_positions, bool) or not isinstance(max_positions, int) or max_positions < 1:
        raise ValueError(f"max_positions: expected a positive integer, got {max_positions!r}")
    one = result.sequence(seq)
    n = min(max_positions, one.n_tokens)
    st, n_sites = one.stats, len(one.sites)
    top1 = st.top1[:, :n]
    words = [_cell_text(w) for w in token_strings(tokenizer, top1)]
    below = [_cell_text(w, 10) for w in token_strings(tokenizer, one.input_ids[:n])]
    has_next = one.targets[:n] >= 0
    above = [_cell_text(w, 10) if ok else "" for w, ok in
             zip(token_strings(tokenizer, one.targets[:n].clamp_min(0)), has_next.tolist())]
    hit = (top1 == one.targets[:n]) & has_next
    rank = st.final_top1_rank[:, :n].double() + 1
    panels = [((st.topk_logits[:, :n, 0] - st.lse[:, :n]).exp().double(), Normalize(0, 1), "Blues",
               "colour: probability of the top-1 token"),
              (rank, LogNorm(1, max(2.0, float(rank.max()))), "magma_r",
               "colour: rank of the final layer's top-1 + 1 (log scale)")]
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.62 * n + 3), 2 * (0.3 * n_sites + 1.6)), squeeze=False,
                             layout="constrained")  # leaves room for the suptitle and the top tick labels
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")  # tokens outside the font
        for ax, (values, norm, cmap_name, label) in zip(axes[:, 0], panels):
            cmap = plt.get_cmap(cmap_name)
            im = ax.imshow(values.numpy(), aspect="auto", origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
            for (r, c), word in zip(((r, c) for r in range(n_sites) for c in range(n)), words):
                red, green, blue, _ = cmap(norm(float(values[r, c])))
                ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
                ax.text(c, r, word, ha="center", va="center", fontsize=6, color=ink,
                        fontweight="bold" if hit[r, c] else "normal")
            ax.set_yticks(range(n_sites), one.sites, fontsize=6)
            ax.set_xticks(range(n), below, rotation=90, fontsize=7)
            top = ax.secondary_xaxis("top")
            top.set_xticks(range(n), above, rotation=90, fontsize=7)
            ax.set_title(label, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
        fig.suptitle(title or f"logit lens, sequence {seq}: top-1 token per site (bold = true next token)")
        fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the interactive grid (report/page.py draws it) ----
REPORT_TOKENS = 2048  # tokens a page shows per lens: a 2,048-token run whole, a few MB
TOPK_SHOWN = 5


def lens_view(lenses: dict, vocab, max_tokens: int = REPORT_TOKENS, page: int = 24) -> dict:
    """The tokens × sites grid of one or more lens results over the same tokens (logit and tuned lens side by
    side), colour switchable between the final top-1's rank, the next token's probability, entropy and KL;
    each cell's tooltip holds that site's top tokens and probabilities."""
    first = next(iter(lenses.values()))
    n = min(first.n_tokens, max_tokens)
    for name, r in lenses.items():
        if r.sites != first.sites or not torch.equal(r.input_ids[:n], first.input_ids[:n]):
            raise ValueError(f"lenses: {name!r} read other sites or tokens than {next(iter(lenses))!r}")
    view = {"type": "lens", "sites": list(first.sites), "page": page,
            "tokens": [vocab.text(i) for i in vocab.use(first.input_ids[:n])],
            "next": [vocab.text(i) if i >= 0 else "–" for i in vocab.use(first.targets[:n])], "lenses": []}
    for name, r in lenses.items():
        st = r.stats
        k = min(TOPK_SHOWN, st.topk_ids.shape[-1])
        ids = st.topk_ids[:, :n, :k].contiguous()
        probs = torch.exp(st.topk_logits[:, :n, :k].double() - st.lse[:, :n, None].double())
        vocab.use(ids)
        layers = [{"name": "rank of the final top-1", "values": array(st.final_top1_rank[:, :n]), "scale": "log", "unit": "rank"}]
        if st.target_logprob is not None:
            layers.append({"name": "p(next token)", "values": probabilities(torch.exp(st.target_logprob[:, :n].double())),
                           "vmin": 0, "vmax": 1, "unit": "probability"})
        layers += [{"name": "entropy (nats)", "values": array(st.entropy[:, :n]), "unit": "nats"},
                   {"name": "KL to the final site (nats)", "values": array(st.kl_to_final[:, :n]), "unit": "nats"}]
        view["lenses"].append({"name": name, "grid": {
            "layers": layers, "cell_text_topk": True,
            "topk": {"ids": array(ids, "i32"), "probs": probabilities(probs), "k": k}}})
    if first.n_tokens > n:
        view["note"] = f"the first {n} of {first.n_tokens} tokens"
    return view


def layer_curves_view(rows: list[dict], title: str = "per site, over all tokens") -> dict:
    """The per-site summary rows (format_table's) as curves over the sites."""
    keys = [(k, label) for k, label in COLUMNS if k in rows[0]] + _probe_columns(rows[0])
    return {"type": "lines", "title": title, "x": [r["site"] for r in rows], "ymin": 0,
            "series": [{"name": label, "y": [r[k] for r in rows]} for k, label in keys]}
