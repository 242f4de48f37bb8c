"""A guess-then-refine run (refine.refine) as a table, JSON and one four-panel picture: stacked top-1
bucket shares per site for each lens beside the corpus' own next-token shares, probability mass per
bucket, refine rates, and depth to the correct answer."""
from __future__ import annotations

import os

import torch

from ..core.files import write_json
from .common import pyplot
from .page import array


def format_refine_table(result) -> str:
    lines = []
    for lens, s in result.lenses.items():
        names = s["buckets"]
        header = f"{'site':>9} " + " ".join(f"{'top1 ' + n:>13}" for n in names) + " " + \
            " ".join(f"{'mass ' + n:>13}" for n in names) + f" {'refined ' + names[0]:>16}"
        lines += [f"lens: {lens} ({s['tokens']} tokens; the corpus' next tokens by bucket: "
                  + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, s["target_share"])) + ")", header,
                  "-" * len(header)]
        for i, site in enumerate(s["sites"]):
            rate = s["final_differs_rate"][i][0]
            lines.append(f"{site:>9} " + " ".join(f"{v:>13.3f}" for v in s["top1_share"][i]) + " "
                         + " ".join(f"{v:>13.3f}" for v in s["mass"][i]) + " "
                         + (f"{rate:>16.3f}" if rate is not None else f"{'-':>16}"))
        lines.append(f"never correct: {s['never_correct_share']:.3f} of the tokens")
        for name, c in s.get("depth_by_class", {}).items():
            mean = c["mean_depth_when_correct"]
            lines.append(f"  {name}: {c['tokens']} tokens, never correct {c['never_correct_share'] or 0:.3f}, "
                         f"mean depth when correct {'-' if mean is None else f'{mean:.1f}'}")
        lines.append("")
    for lens, t in result.tasks.items():
        for kind in ("first_token", "later_tokens"):
            if "answers" in t:
                a = t["answers"][kind]
                mean = a["mean_depth_when_correct"]
                lines.append(f"{lens} lens, answers' {kind.replace('_', ' ')}: {a['tokens']} tokens, never correct "
                             f"{a['never_correct_share'] or 0:.3f}, mean depth when correct "
                             f"{'-' if mean is None else f'{mean:.1f}'}")
        if "choices" in t:
            c = t["choices"]
            lines.append(f"{lens} lens, multiple choice ({c['prompts']} prompts), per site format / answer share:")
            lines.append("  " + "  ".join(f"{s}:{f:.2f}/{a:.2f}" for s, f, a in
                                         zip(c["sites"], c["format_share"], c["answer_share"])))
    return "\n".join(lines)


def plot_refine(result, path: str, title: str = "guess then refine") -> None:
    plt = pyplot()
    lenses = list(result.lenses)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    names = result.buckets
    colours = [f"C{i}" for i in range(len(names))]
    styles = {"logit": "-", "tuned": "--"}
    # (a) stacked top-1 shares, one band of bars per lens, the corpus shares at the right
    ax = axes[0, 0]
    n_sites = len(result.sites)
    width = 0.8 / len(lenses)
    for li, lens in enumerate(lenses):
        s = result.lenses[lens]
        bottom = [0.0] * n_sites
        for b, name in enumerate(names):
            vals = [row[b] for row in s["top1_share"]]
            ax.bar([i + li * width for i in range(n_sites)], vals, width, bottom=bottom, color=colours[b],
                   alpha=1.0 if li == 0 else 0.55, label=f"{name}" if li == 0 else None,
                   edgecolor="white", linewidth=0.3)
            bottom = [x + v for x, v in zip(bottom, vals)]
    target = result.lenses[lenses[0]]["target_share"]
    bottom = 0.0
    for b, v in enumerate(target):
        ax.bar(n_sites + 1, v, 0.8, bottom=bottom, color=colours[b], hatch="//", edgecolor="black", linewidth=0.3)
        bottom += v
    ax.set_xticks([0, n_sites // 2, n_sites - 1, n_sites + 1], ["0", str(n_sites // 2), str(n_sites - 1), "corpus"])
    ax.set_title("share of top-1 predictions by frequency bucket" + (" (logit solid, tuned pale)" if len(lenses) > 1
                                                                      else ""))
    ax.set_xlabel("site")
    ax.legend(title="rank bucket", fontsize=8)
    # (b) mass per bucket
    ax = axes[0, 1]
    for lens in lenses:
        for b, name in enumerate(names):
            ax.plot(range(n_sites), [row[b] for row in result.lenses[lens]["mass"]], color=colours[b],
                    ls=styles.get(lens, ":"), label=f"{lens}: {name}")
    ax.set_title("mean probability mass on each bucket")
    ax.set_xlabel("site")
    ax.legend(fontsize=7, ncol=2)
    # (c) refine rate: top-1 in the bucket, final top-1 different
    ax = axes[1, 0]
    for lens in lenses:
        for b, name in enumerate(names):
            vals = [row[b] if row[b] is not None else float("nan") for row in result.lenses[lens]["final_differs_rate"]]
            ax.plot(range(n_sites), vals, color=colours[b], ls=styles.get(lens, ":"), label=f"{lens}: {name}")
    ax.set_title("refined later: share whose final top-1 differs, by the top-1's bucket")
    ax.set_xlabel("site")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, ncol=2)
    # (d) depth to the correct answer
    ax = axes[1, 1]
    for li, lens in enumerate(lenses):
        s = result.lenses[lens]
        by_class = s.get("depth_by_class") or {"all tokens": {"hist": s["depth_to_correct_hist"], "tokens": s["tokens"]}}
        for ci, (name, c) in enumerate(by_class.items()):
            cum = _right_by_site(c)
            ax.plot(range(len(cum)), cum, color=f"C{ci}", ls=styles.get(lens, ":"), label=f"{lens}: {name}")
    ax.set_ylabel("share of tokens right by this site")
    ax.set_title("depth to the correct answer, cumulative, by the true token's class")
    ax.set_xlabel("earliest site from which the top-1 is the true next token and stays")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _right_by_site(depth: dict) -> list[float]:
    """From a depth-to-correct summary (refine.aggregate.depth_summary): the share of its tokens right by each site."""
    right = torch.tensor(depth["hist"][:-1], dtype=torch.float64).cumsum(0) / max(depth["tokens"], 1)
    return right.tolist()


def plot_refine_tasks(result, path: str, title: str = "answers and multiple choice") -> None:
    """Left: share of answer tokens right by each site (cumulative depth to correct), first token vs the rest.
    Right: multiple choice per site: top-1 is an option (format), the most probable option is right (answer)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    styles = {"logit": "-", "tuned": "--"}
    for lens, t in result.tasks.items():
        if "answers" in t:
            for ci, kind in enumerate(("first_token", "later_tokens")):
                a = t["answers"][kind]
                cum = _right_by_site(a)
                left.plot(range(len(cum)), cum, color=f"C{ci}", ls=styles.get(lens, ":"),
                          label=f"{lens}: answer's {kind.replace('_', ' ')} ({a['tokens']})")
        if "choices" in t:
            c = t["choices"]
            right.plot(range(len(c["sites"])), c["format_share"], color="C2", ls=styles.get(lens, ":"),
                       label=f"{lens}: top-1 is an option letter")
            right.plot(range(len(c["sites"])), c["answer_share"], color="C3", ls=styles.get(lens, ":"),
                       label=f"{lens}: most probable option is right")
    left.set_title("answer tokens right by this site (teacher-forced)")
    right.set_title(f"multiple choice ({next(iter(result.tasks.values())).get('choices', {}).get('prompts', 0)} "
                    "prompts)")
    for ax in (left, right):
        ax.set_xlabel("site")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_refine_outputs(result, out_dir: str, name: str = "refine") -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.png")
    write_json(result.to_json(), json_path)
    model = result.meta.get("model", {}).get("model", "")
    plot_refine(result, png_path, title=f"guess then refine, {model}: {result.meta.get('tokens')} tokens, "
                                        f"lens{'es' if len(result.lenses) > 1 else ''} {', '.join(result.lenses)}")
    if result.tasks:
        plot_refine_tasks(result, os.path.join(out_dir, f"{name}_tasks.png"), title=f"answers and multiple choice, "
                                                                                  f"{model}")
    return json_path, png_path


# ---- the interactive page (report/page.py draws it) ----
def _nan(rows):
    """None (a bucket with no top-1 at a site) as NaN, so the grid shows it as no value."""
    return [[float("nan") if v is None else v for v in r] for r in rows]


def refine_views(result) -> list[dict]:
    """Top-1 share per bucket per site of every lens in one chart; per lens a sites × buckets grid (top-1
    share, mass, refine rates; switchable), the corpus' own bucket shares and depth to correct; the tasks."""
    lenses, names = list(result.lenses), result.buckets
    views = [{"type": "lines", "title": "share of top-1 predictions in each frequency bucket, per site",
              "x": result.sites, "ymin": 0, "ymax": 1,
              "series": [{"name": f"{lens}: {name}" if len(lenses) > 1 else name,
                          "y": [row[b] for row in result.lenses[lens]["top1_share"]]}
                         for lens in lenses for b, name in enumerate(names)],
              "note": f"buckets are ranks of the tokens' corpus frequency ({names[0]}: the most frequent); "
                      "early sites guess frequent tokens, later ones refine"}]
    tabs = []
    for lens in lenses:
        s = result.lenses[lens]
        grid = {"type": "heatmap", "title": f"{lens} lens: site × bucket", "rows": s["sites"], "cols": names,
                "row_order": "up", "row_title": "site", "col_title": "bucket", "corner": "site \\ bucket",
                "show_values": True, "tall_cols": True, "layers": [
                    {"name": "share of top-1 in the bucket", "values": array(s["top1_share"]), "vmin": 0, "vmax": 1},
                    {"name": "mean probability mass on the bucket", "values": array(s["mass"]), "vmin": 0, "vmax": 1},
                    {"name": "refined: final top-1 differs", "values": array(_nan(s["final_differs_rate"])),
                     "vmin": 0, "vmax": 1},
                    {"name": "top-1 changes at a later site", "values": array(_nan(s["changes_later_rate"])),
                     "vmin": 0, "vmax": 1}],
                "note": "the refine rates count the tokens whose top-1 at this site is in the bucket"}
        corpus = {"type": "bars", "title": "the corpus' next tokens by bucket", "labels": names,
                  "values": s["target_share"]}
        by_class = {"all tokens": {"hist": s["depth_to_correct_hist"], "tokens": s["tokens"],
                                   "never_correct_share": s["never_correct_share"]}, **s.get("depth_by_class", {})}
        depth = {"type": "lines", "title": "depth to the correct answer: share of tokens right by each site",
                 "x": s["sites"], "ymin": 0, "ymax": 1,
                 "series": [{"name": f"{name} ({c['tokens']})", "y": _right_by_site(c)}
                            for name, c in by_class.items()],
                 "note": "right from this site on: the top-1 is the true next token here and at every later site; "
                         "never right: " + ", ".join(f"{name} {c['never_correct_share'] or 0:.3f}"
                                                     for name, c in by_class.items())}
        tabs.append({"label": f"{lens} lens", "views": [grid, corpus, depth]})
    if result.tasks:
        tabs.append({"label": "answers and multiple choice", "views": _task_views(result)})
    views.append({"type": "tabs", "tabs": tabs})
    return views


def _task_views(result) -> list[dict]:
    out, answers, choices = [], [], []
    for lens, t in result.tasks.items():
        for kind in ("first_token", "later_tokens") if "answers" in t else ():
            a = t["answers"][kind]
            answers.append({"name": f"{lens}: answer's {kind.replace('_', ' ')} ({a['tokens']})",
                            "y": _right_by_site(a)})
        if "choices" in t:
            c = t["choices"]
            choices += [{"name": f"{lens}: top-1 is an option", "y": c["format_share"]},
                        {"name": f"{lens}: most probable option is right", "y": c["answer_share"]}]
    if answers:
        out.append({"type": "lines", "title": "answer tokens right by each site (teacher-forced)", "x": result.sites,
                    "ymin": 0, "ymax": 1, "series": answers})
    if choices:
        n = next(t["choices"]["prompts"] for t in result.tasks.values() if "choices" in t)
        out.append({"type": "lines", "title": f"multiple choice ({n} prompts), per site", "x": result.sites,
                    "ymin": 0, "ymax": 1, "series": choices})
    return out
