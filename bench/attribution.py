"""Attribution patching (fusedlens.intervene.attribution) on SmolLM2 against the exact patch of every node.

    python bench/attribution.py eiffel         -> bench/results/attribution_smollm2_eiffel.{json,txt,png}
    python bench/attribution.py ioi --pairs 4  -> bench/results/attribution_smollm2_ioi.{json,txt,png}

eiffel: the pair of docs/patch.md ("The Eiffel Tower is in the city of" / "The Colosseum ...", " Paris"
vs " Rome"). ioi: IOI prompts of bench/dla.py (Wang et al. 2022) against the same frames with two
other names (the "ABC" corruption), metric logit(IO) − logit(S), averaged over the pairs. Per node
kind: AtP, AtP* (Kramár et al. 2024) and the exact grid (every node patched alone, batched rows),
their times and nodes per second, Pearson and Spearman correlation with the exact effects, which of
the true top 20 nodes by |effect| each method's top 20 misses, and whether AtP* recovers AtP's misses.
"""
import argparse
import re
import time

from common import machine_info, model, result_path, write_result
from dla import NAMES, prompts

EIFFEL = ("The Eiffel Tower is in the city of", "The Colosseum is in the city of", " Paris", " Rome")


def ioi_pairs(lm, n: int):
    out = []
    for p, a, b in prompts(21):
        i = [x for x, _ in NAMES].index(a) if a in [x for x, _ in NAMES] else [y for _, y in NAMES].index(a)
        c, d = NAMES[(i + 3) % len(NAMES)]
        bad = re.sub(rf"\b{a.strip()}\b", c.strip(), re.sub(rf"\b{b.strip()}\b", d.strip(), p))
        if len(lm.tokenizer(p)["input_ids"]) == len(lm.tokenizer(bad)["input_ids"]) and bad != p:
            out.append((p, bad, a, b))
    lengths = {}
    for item in out:  # the most common length: attribution compares position by position
        lengths.setdefault(len(lm.tokenizer(item[0])["input_ids"]), []).append(item)
    return max(lengths.values(), key=len)[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("eiffel", "ioi"))
    ap.add_argument("--pairs", type=int, default=4, help="ioi: prompt pairs (default %(default)s)")
    ap.add_argument("--kinds", default=None, help="node kinds (default: eiffel resid,attn,mlp,head,q,k,v; "
                                                  "ioi attn,mlp,head,q,k,v)")
    ap.add_argument("--batch-size", type=int, default=64, help="exact patches per forward")
    ap.add_argument("--out", default=None, help="path stem (default bench/results/attribution_smollm2_<what>)")
    args = ap.parse_args()
    out = args.out or result_path(f"attribution_smollm2_{args.what}")
    kinds = (args.kinds or ("resid,attn,mlp,head,q,k,v" if args.what == "eiffel" else "attn,mlp,head,q,k,v")).split(",")

    import torch

    from fusedlens.intervene.attribution import attribution_patch
    from fusedlens.intervene.verify import compare_with_exact, exact_grid
    from fusedlens.report.attribution import format_comparison, plot_against_exact

    lm = model()
    items = [EIFFEL] if args.what == "eiffel" else ioi_pairs(lm, args.pairs)
    clean, bad, ans, cf = ([x[i] for x in items] for i in range(4))
    runs, seconds = {}, {}
    for method in ("atp", "atp*"):
        attribution_patch(lm, clean, bad, ans, cf, kinds=kinds, method=method)  # warm-up
        t0 = time.perf_counter()
        runs[method] = attribution_patch(lm, clean, bad, ans, cf, kinds=kinds, method=method)
        seconds[method] = time.perf_counter() - t0
        print(f"{method}: {seconds[method]:.2f} s", flush=True)
    r = runs["atp"]
    ids = lambda text: torch.tensor(lm.tokenizer(text)["input_ids"])  # noqa: E731
    pairs = [(ids(c), ids(b), lm.tokenizer.convert_tokens_to_ids(lm.tokenizer.tokenize(a))[0],
              lm.tokenizer.convert_tokens_to_ids(lm.tokenizer.tokenize(f))[0]) for c, b, a, f in items]
    t0 = time.perf_counter()
    kind_seconds = {}

    def tick(kind, n, last=[t0]):
        kind_seconds[kind] = time.perf_counter() - last[0]
        last[0] = time.perf_counter()
        print(f"exact {kind}: {n} nodes x {len(pairs)} pair(s), {kind_seconds[kind]:.1f} s", flush=True)

    exact = exact_grid(lm, pairs, {k: tuple(r.estimate[k].shape) for k in kinds}, r.metric, args.batch_size, tick)
    seconds["exact"] = time.perf_counter() - t0
    n_nodes = sum(r.estimate[k].numel() for k in kinds)
    report = {m: compare_with_exact(exact, runs[m], top=20) for m in runs}
    recovered = {}
    for kind in kinds:
        miss_atp = {tuple(m["index"]) for m in report["atp"][kind]["missed"]}
        miss_star = {tuple(m["index"]) for m in report["atp*"][kind]["missed"]}
        recovered[kind] = {"atp_missed": len(miss_atp), "atp*_missed": len(miss_star),
                           "recovered_by_atp*": len(miss_atp - miss_star), "new_in_atp*": len(miss_star - miss_atp)}
    lines = [f"SmolLM2-135M, {args.what}: {len(items)} pair(s) of {len(r.tokens)} tokens; metric {r.metric}, "
             f"clean {r.clean:.3f}, corrupted {r.corrupted:.3f}; {n_nodes} nodes ({', '.join(kinds)})",
             f"time: atp {seconds['atp']:.2f} s ({n_nodes / seconds['atp']:.0f} nodes/s), atp* {seconds['atp*']:.2f} s "
             f"({n_nodes / seconds['atp*']:.0f} nodes/s), exact {seconds['exact']:.1f} s "
             f"({n_nodes / seconds['exact']:.1f} nodes/s); exact / atp {seconds['exact'] / seconds['atp']:.0f}x"]
    for m in runs:
        lines.append(format_comparison(report[m], m, r.tokens, r.positions))
    lines.append("AtP's misses among the true top 20 that AtP* finds: " + ", ".join(
        f"{k} {v['recovered_by_atp*']} of {v['atp_missed']} (AtP* misses {v['atp*_missed']})" for k, v in recovered.items()))
    if args.what == "ioi":
        lines.append("pairs: " + "; ".join(f"{c!r} / {b!r}" for c, b, _, _ in items))
    text = "\n".join(lines)
    print(text)
    with open(out + ".txt", "w") as f:
        f.write(text + "\n")
    plot_against_exact(exact, list(runs.values()), out + ".png",
                       title=f"SmolLM2, {args.what}: attribution patching against the exact patch of each node")
    write_result({"what": args.what, "pairs": [list(x) for x in items], "kinds": kinds, "nodes": n_nodes,
                  "seconds": seconds, "exact_seconds_by_kind": kind_seconds,
                  "nodes_per_second": {k: n_nodes / v for k, v in seconds.items()}, "comparison": report,
                  "recovered": recovered, "clean": r.clean, "corrupted": r.corrupted,
                  "exact": {k: v.tolist() for k, v in exact.items()},
                  "estimates": {m: {k: v.tolist() for k, v in runs[m].estimate.items()} for m in runs},
                  "machine": machine_info()}, out + ".json")


if __name__ == "__main__":
    main()
