"""A probe run as a table, JSON and the R²-against-layer picture."""
from __future__ import annotations

import os

from ..core.files import write_json
from .common import pyplot


def format_number(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_probe_table(result) -> str:
    """One line per site: the first target's fit in full, then every other target's held-out R², then each
    class target's held-out accuracy and macro-F1."""
    main, others = (result.targets[0], result.targets[1:]) if result.targets else (None, [])
    classes = list(result.classes)
    header = f"{'site':>9}"
    if main:
        header += (f" {'n_train':>8} {'rank':>5} {'lambda':>10} {'alpha':>8} "
                   f"{'R2 train':>9} {'R2 val':>9} {'R2 held-out':>11}")
    width = max([13] + [len(t) + 5 for t in others] + [len(c) + 4 for c in classes])
    header += "".join(f" {'held ' + t:>{width}}" for t in others)
    header += "".join(f" {'acc ' + c:>{width}} {'F1 ' + c:>{width}}" for c in classes)
    title = f"target: {main} (R² of the ridge probe; val = {result.meta.get('folds', '?')}-fold)" if main else \
        "class targets: held-out accuracy and macro-F1 of the one-hot ridge probe's argmax"
    lines = [title, header, "-" * len(header)]
    for i, row in enumerate(result.rows()):
        line = f"{row['site']:>9}"
        if main:
            f = row["targets"][main]
            line += (f" {f['n_train']:>8} {f['rank']:>5} {f['lam']:>10.3g} {f['alpha']:>8.2g} "
                     f"{f['r2_train']:>9.4f} {f['r2_val']:>9.4f} {format_number(f['r2_heldout'], '>11.4f')}")
        line += "".join(f" {format_number(row['targets'][t]['r2_heldout'], f'>{width}.4f')}" for t in others)
        for c in classes:
            s = result.classes[c]["sites"][i]
            line += f" {format_number(s['accuracy'], f'>{width}.4f')} {format_number(s['macro_f1'], f'>{width}.4f')}"
        lines.append(line)
    return "\n".join(lines)


def plot_probe_r2(result, path: str, title: str = "ridge probes") -> None:
    """Held-out R² (classes: accuracy) against depth: one colour per target, one line style per lag."""
    plt = pyplot()
    x = list(range(len(result.sites)))  # logprob and loss (= −logprob) have the same R²: their lines coincide
    names = list(result.targets) + list(result.classes)
    bases = list(dict.fromkeys(n.rsplit("@lag", 1)[0] for n in names))
    lags = list(dict.fromkeys(n.rsplit("@lag", 1)[1] for n in names if "@lag" in n))
    styles = ["-", "--", ":", "-."]
    colour = {b: f"C{i % 10}" for i, b in enumerate(bases)}

    def style(name):
        base, _, lag = name.rpartition("@lag")
        return dict(color=colour[base], ls=styles[lags.index(lag) % len(styles)] if lag in lags else "-")

    fig, ax = plt.subplots(figsize=(11, 4.8))
    for j, name in enumerate(result.targets):
        held = [fits[j]["r2_heldout"] for fits in result.fits]
        if all(v is not None for v in held):
            ax.plot(x, held, marker="o", markersize=3, label=f"{name}: held-out R²", **style(name))
    for name, c in result.classes.items():
        acc = [s["accuracy"] for s in c["sites"]]
        if all(v is not None for v in acc):
            ax.plot(x, acc, marker="s", markersize=3, label=f"{name}: held-out accuracy", **style(name))
    if result.targets:
        first = result.targets[0]
        ax.plot(x, [fits[0]["r2_train"] for fits in result.fits], color="grey", ls="--", lw=0.8,
                label=f"{first}: train R²")
        ax.plot(x, [fits[0]["r2_val"] for fits in result.fits], color="grey", ls=":", lw=0.8,
                label=f"{first}: validation R²")
    ax.axhline(0.6, color="black", lw=0.6, ls="-.", label="R² = 0.6")
    ax.set_xlabel("site (0 = embedding output, i + 1 = block i)")
    ax.set_ylabel("R² (classes: accuracy)" if result.classes else "R²")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_probe_outputs(result, out_dir: str, name: str = "probe") -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}_r2.png")
    claims = result.claims()
    write_json({**result.meta, "targets": result.targets, "classes": {k: v["classes"] for k, v in result.classes.items()},
                "layers": result.rows(), "claim": claims[0] if claims else None, "claims": claims}, json_path)
    meta = result.meta
    lags = meta.get("lags") or [0]
    plot_probe_r2(result, png_path, title=f"ridge probes, {meta.get('model', {}).get('model', '')}: "
                                          f"{meta.get('train_tokens')} train / {meta.get('heldout_tokens')} held-out "
                                          f"tokens, lag{'s' if len(lags) > 1 else ''} {', '.join(map(str, lags))}")
    return json_path, png_path


# ---- the interactive page (report/page.py draws it) ----
FIT_HEAD = ["site", "n train", "rank", "λ", "α", "R² train", "R² val", "R² held-out"]


def probe_views(result) -> list[dict]:
    """Held-out R² per site of every target (lag included), each target's train / validation / held-out
    curves and fit facts in a tab, the class targets' held-out accuracy and macro-F1, and the claims."""
    x, views = list(result.sites), []
    if result.targets:
        views.append({"type": "lines", "title": "held-out R² per site", "x": x, "ymax": 1,
                      "ylabel": "R² on the held-out tokens",
                      "series": [{"name": t, "y": [f[j]["r2_heldout"] for f in result.fits]}
                                 for j, t in enumerate(result.targets)],
                      "note": "one curve per target and lag: 'logit@lag-1' is the logit position t−1 gave the "
                              "token at t, probed from x_t (logprob and loss have the same R²: their curves "
                              "coincide)"})
        tabs = []
        for j, t in enumerate(result.targets):
            fits = [f[j] for f in result.fits]
            tabs.append({"label": t, "views": [
                {"type": "lines", "x": x, "ymax": 1, "ylabel": "R²",
                 "series": [{"name": name, "y": [f[key] for f in fits]} for key, name in
                            (("r2_train", "train"), ("r2_val", f"validation ({result.meta.get('folds', '?')}-fold)"),
                             ("r2_heldout", "held-out"))]},
                {"type": "table", "head": FIT_HEAD,
                 "rows": [[s] + [f[k] for k in ("n_train", "rank", "lam", "alpha", "r2_train", "r2_val", "r2_heldout")]
                          for s, f in zip(x, fits)]}]})
        views.append({"type": "tabs", "title": "each target: train, validation and held-out R², the penalty chosen",
                      "tabs": tabs})
    if result.classes:
        views.append({"type": "lines", "title": "class targets: held-out accuracy and macro-F1 per site", "x": x,
                      "ymin": 0, "ymax": 1,
                      "series": [{"name": f"{name}: {label}", "y": [s[key] for s in c["sites"]]}
                                 for name, c in result.classes.items()
                                 for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))],
                      "note": "the argmax of a one-hot ridge probe; classes: " + "; ".join(
                          f"{name}: {', '.join(map(str, c['classes']))}" for name, c in result.classes.items())})
    claims = result.claims() if result.targets else []
    if claims:
        views.append({"type": "table", "title": "claims", "head": ["statement", "holds", "min held-out R²"],
                      "rows": [[c["statement"], "yes" if c["holds"] else "no", c["min_r2_heldout"]] for c in claims]})
    return views
