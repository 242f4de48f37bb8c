"""`fusedlens patch`: activation patching (causal tracing) of a clean prompt into a corrupted one over a
layers × positions grid, batched."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.checks import check_output_dir
from ..core.fields import option
from ..core.models import ModelOptions
from .options import add_arguments, from_args, out_default, parse_positions

HELP = ("activation patching: restore a clean run's state into a corrupted run at every layer and position, "
        "exactly or estimated from gradients (AtP, AtP*)")


@dataclass(kw_only=True)
class PatchConfig(ModelOptions):
    clean: str = option("", "the clean prompt")
    corrupted: str = option("", "the corrupted prompt (same token count)")
    answer: str = option("", "one token: the clean run's answer (e.g. ' Paris')")
    counterfactual: str | None = option(None, "one token: metric = logit(answer) - logit(counterfactual)")
    metric: str | None = option(None, "logit_diff (needs --counterfactual; its default) or prob",
                                choices=("logit_diff", "prob"))
    kinds: str = option("resid,attn,mlp", "grids: resid (with the embedding), mid, attn, mlp, head; atp and "
                                          "atp* also neuron, q, k, v (not mid)")
    method: str = option("exact", "exact (the patched grid), atp (attribution patching: gradients) or atp* (with "
                                  "the QK fix and GradDrop); several, comma-separated, are compared node by node")
    verify: int = option(0, "atp, atp*: patch the top K nodes of each kind by |estimate| exactly, and K more "
                            "sampled from the rest, and bound the misses")
    top: int = option(20, "with exact and atp/atp*: how many of the true top nodes by |effect| to check")
    knockout_keys: str | None = option(None, "attention knockout instead of patching: cut the edges from "
                                             "--knockout-queries to these positions of --clean (e.g. 1-4 or 1,3)")
    knockout_queries: str = option("-1", "query positions of the knockout (default the last)")
    window: int | None = option(None, "blocks per knockout window (default 9)")
    batch_size: int = option(32, "patches per forward")
    out: str = option(out_default("patch"), "output folder")
    progress: bool = option(True, "no progress bar")


def main(args) -> int:
    import os
    import time

    from ..core.files import write_json
    from ..intervene.attribution import KINDS as ATP_KINDS, attribution_patch
    from ..intervene.patching import KINDS as EXACT_KINDS, patch
    from ..intervene.verify import compare_with_exact
    from ..report.attribution import (format_attribution_table, format_comparison, patch_page_views,
                                      plot_against_exact, write_attribution_outputs)
    from ..report.page import REPORT, write_page
    from ..report.patch import format_patch_table, write_patch_outputs

    cfg = from_args(PatchConfig, args)
    _check(cfg)
    if cfg.knockout_keys:
        return _knockout(cfg)
    check_output_dir("out", cfg.out, "patch")
    lm = cfg.load()
    methods, kinds = _methods(cfg), _kinds(cfg)
    exact, estimates, wrote, comparison = None, [], [], {}
    if "exact" in methods:
        t0 = time.perf_counter()
        exact = patch(lm, cfg.clean, cfg.corrupted, cfg.answer, cfg.counterfactual, metric=cfg.metric,
                      kinds=[k for k in kinds if k in EXACT_KINDS], batch_size=cfg.batch_size, progress=cfg.progress)
        exact.meta["seconds"] = time.perf_counter() - t0
        print(format_patch_table(exact))
        wrote += write_patch_outputs(exact, cfg.out)
    for method in (m for m in methods if m != "exact"):
        t1 = time.perf_counter()
        est = attribution_patch(lm, cfg.clean, cfg.corrupted, cfg.answer, cfg.counterfactual, metric=cfg.metric,
                                kinds=[k for k in kinds if k in ATP_KINDS], method=method, verify=cfg.verify,
                                batch_size=cfg.batch_size, progress=cfg.progress)
        est.meta["seconds"] = time.perf_counter() - t1
        print(format_attribution_table(est))
        wrote += write_attribution_outputs(est, cfg.out)
        estimates.append(est)
    if exact is not None and estimates:
        effects = {k: v - exact.corrupted for k, v in exact.values.items()}
        comparison = {e.method: compare_with_exact(effects, e, top=cfg.top) for e in estimates}
        for e in estimates:
            print(format_comparison(comparison[e.method], e.method, exact.tokens, exact.positions))
        path = os.path.join(cfg.out, "attribution_vs_exact.json")
        write_json({"top": cfg.top, "seconds": {"exact": exact.meta["seconds"],
                                                **{e.method: e.meta["seconds"] for e in estimates}},
                    "methods": comparison}, path)
        wrote += [path, plot_against_exact(effects, estimates, os.path.join(cfg.out, "attribution_vs_exact.png"))]
    wrote.append(write_page(os.path.join(cfg.out, REPORT), "fusedlens: patching", patch_page_views(
        exact, estimates, comparison), meta=_meta(cfg)))
    print("wrote " + ", ".join(wrote) + " (report.html: the interactive page; open it in a browser)")
    return 0


def _meta(cfg: PatchConfig) -> dict:
    """The run's question, for the page's header."""
    keys = ("clean",) + (() if cfg.knockout_keys else ("corrupted",)) + ("answer", "counterfactual")
    return {"model": cfg.model or "smollm2-135m", **{k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}}


def _kinds(cfg: PatchConfig) -> list[str]:
    return [k.strip() for k in cfg.kinds.split(",") if k.strip()]


def _methods(cfg: PatchConfig) -> list[str]:
    return list(dict.fromkeys(m.strip() for m in cfg.method.split(",") if m.strip()))


def _check(cfg: PatchConfig) -> None:
    """Everything the model is not needed for, before it loads."""
    from ..intervene.patching import KINDS, check_causal_edges

    knockout = bool(cfg.knockout_keys)
    for name in ("clean", "answer") + (() if knockout else ("corrupted",)):
        if not getattr(cfg, name).strip():
            raise ValueError(f"{name}: required (--{name.replace('_', '-')})")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {cfg.batch_size}")
    if cfg.window is not None and cfg.window < 1:
        raise ValueError(f"window: expected >= 1 blocks, got {cfg.window}")
    if cfg.metric == "logit_diff" and cfg.counterfactual is None:
        raise ValueError("metric: logit_diff needs --counterfactual")
    if cfg.counterfactual is not None and cfg.counterfactual == cfg.answer:
        raise ValueError(f"counterfactual: {cfg.counterfactual!r} is the answer; the logit difference would be 0")
    if knockout:
        keys = parse_positions("knockout_keys", cfg.knockout_keys)
        queries = parse_positions("knockout_queries", cfg.knockout_queries)
        if min(keys + queries) >= 0:  # negative ones count from the end: checked once the prompt is tokenized
            check_causal_edges(sorted(set(keys)), sorted(set(queries)))
        return
    if cfg.clean == cfg.corrupted:
        raise ValueError("corrupted: the same prompt as --clean; patching needs two runs that differ")
    from ..intervene.attribution import KINDS as ATP_KINDS, METHODS

    methods = _methods(cfg)
    if not methods or any(m not in ("exact",) + METHODS for m in methods):
        raise ValueError(f"method: expected some of exact, {', '.join(METHODS)}, got {cfg.method!r}")
    allowed = (set(KINDS) if "exact" in methods else set()) | (set(ATP_KINDS) if set(methods) - {"exact"} else set())
    kinds = _kinds(cfg)
    if not kinds or any(k not in allowed for k in kinds):
        raise ValueError(f"kinds: expected some of {', '.join(sorted(allowed))} for --method {cfg.method}, "
                         f"got {cfg.kinds!r}")
    for m in methods:
        ok = KINDS if m == "exact" else ATP_KINDS
        if not any(k in ok for k in kinds):
            raise ValueError(f"kinds: none of {cfg.kinds!r} is a kind --method {m} computes ({', '.join(ok)})")
    if cfg.verify < 0 or cfg.top < 1:
        raise ValueError(f"verify: expected >= 0 and top >= 1, got {cfg.verify} and {cfg.top}")


def _knockout(cfg: PatchConfig) -> int:
    import os

    from ..intervene.patching import knockout
    from ..report.page import REPORT, write_page
    from ..report.patch import plot_knockout
    from ..core.files import write_json

    check_output_dir("out", cfg.out, "patch")
    lm = cfg.load()
    r = knockout(lm, cfg.clean, cfg.answer, cfg.counterfactual, metric=cfg.metric,
                 keys=parse_positions("knockout_keys", cfg.knockout_keys),
                 queries=parse_positions("knockout_queries", cfg.knockout_queries), window=cfg.window,
                 batch_size=cfg.batch_size)
    print(f"{r.metric_name} without knockout {r.base:.4f}; edges {r.queries} -> {r.keys} cut per window:")
    for (lo, hi), v, d in zip(r.windows, r.metric.tolist(), r.drop.tolist()):
        print(f"  blocks {lo:>2}-{hi:<2} {v:>9.4f}  drop {d:+.4f}")
    os.makedirs(cfg.out, exist_ok=True)
    write_json(r.to_dict(), os.path.join(cfg.out, "knockout.json"))
    plot_knockout(r, os.path.join(cfg.out, "knockout.png"))
    write_page(os.path.join(cfg.out, REPORT), r.html_title, r.views(None), meta=_meta(cfg))
    print(f"wrote {cfg.out}/knockout.json, knockout.png, {REPORT} (the interactive page; open it in a browser)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("patch", help=HELP)
    add_arguments(p, PatchConfig)
    p.set_defaults(func=main)
