"""What token-set mass costs ops.lens_stats on the cpu backend: the same sweep without sets, with 8 sets
covering the whole vocabulary (every logit is in a set: the worst case) and with 8 sets of 1,000 tokens
in all (frequency buckets, answer options), against naive PyTorch (logits per layer, softmax, a one-hot
matmul for the set mass) and the floor (the bare GEMM of the same shape), side by side on the same
inputs, rounds interleaved.

    python bench/lens_stats_sets.py --tokens 512 --rounds 3          -> bench/results/lens_stats_sets.json
    python bench/lens_stats_sets.py --tokens 256 --rounds 0 --pairs 12 --set-counts 4,8,16   # paired only

--pairs N adds a paired measurement per dense set count: N pairs of calls (no sets, then that many
dense sets over the whole vocabulary; the order alternating), and the median and min of the pairs'
ratios. Two calls seconds apart see the same host speed, so the ratio resolves a cost of 1-2 %, which
the best times of separate rounds on a shared host do not.
"""
import statistics

import torch

from common import arg_parser, interleaved, threads_from, write_result
from lens_stats import bare_gemm, make_inputs


def naive_set_mass(hidden, norm, unembed, sets):
    """What one writes without fusedlens: every layer's logits, their softmax, the mass of each set."""
    xn, w = norm(hidden), unembed.weight
    member = torch.nn.functional.one_hot(sets.clamp_min(0), int(sets.max()) + 1).float() * (sets >= 0)[:, None]
    return [torch.softmax(xn[s] @ w.T, -1) @ member for s in range(xn.shape[0])]


def main():
    ap = arg_parser(__doc__, "lens_stats_sets.json")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=0, help="paired calls per dense set count (0: none)")
    ap.add_argument("--set-counts", default="4,8,16", help="dense set counts of the paired measurement")
    args = ap.parse_args()
    threads_from(args)

    from fusedlens import ops

    hidden, norm, unembed, targets = make_inputs(args.tokens, args.vocab)
    g = torch.Generator().manual_seed(1)
    dense = torch.randint(0, 8, (args.vocab,), generator=g)
    sparse = torch.full((args.vocab,), -1)
    sparse[torch.randperm(args.vocab, generator=g)[:1000]] = torch.arange(1000) % 8
    fused = lambda sets: lambda: ops.lens_stats(hidden, norm, unembed, targets, 5, backend="cpu",  # noqa: E731
                                                token_sets=sets)
    variants = {"no_sets": fused(None), "8_sets_whole_vocab": fused(dense), "8_sets_1000_tokens": fused(sparse),
                "naive_torch_8_sets_whole_vocab": lambda: naive_set_mass(hidden, norm, unembed, dense),
                "bare_gemm": lambda: bare_gemm(norm(hidden), unembed.weight)}
    out = rounds_of(variants, args.rounds) if args.rounds > 0 else {}
    if args.pairs > 0:
        out["paired"] = pairs_of(fused, args.pairs, [int(c) for c in args.set_counts.split(",")], args.vocab, g)
    write_result({"tokens": args.tokens, "vocab": args.vocab, "sites": hidden.shape[0], "rounds": args.rounds,
                  "pairs": args.pairs, **out}, args.out)


def rounds_of(variants, n_rounds) -> dict:
    """Every variant once a round, rounds in alternating order: best times, and each round's own ratios."""
    res = interleaved(variants, n_rounds, alternate=True)
    best, rounds = res["best"], res["rounds"]
    ratios = {k: v / best["no_sets"] for k, v in best.items()}
    over_gemm = {k: v / best["bare_gemm"] for k, v in best.items()}
    # A shared host's speed drifts over minutes: each round's own ratio to the run without sets (taken
    # seconds apart) and their median, beside the ratio of the best times.
    paired = {k: statistics.median(t[k] / t["no_sets"] for t in rounds) for k in variants}
    print("over no sets (best times):", {k: round(v, 3) for k, v in ratios.items()})
    print("over no sets (median of each round's ratio):", {k: round(v, 3) for k, v in paired.items()})
    print("over the bare GEMM:", {k: round(v, 3) for k, v in over_gemm.items()})
    return {"seconds": best, "over_no_sets": ratios, "over_no_sets_median_of_rounds": paired,
            "over_bare_gemm": over_gemm, "per_round_seconds": rounds}


def pairs_of(fused, n_pairs: int, counts: list[int], vocab: int, g) -> dict:
    """Per dense set count: n_pairs of (no sets, that many sets) calls, alternating which goes first."""
    out = {}
    fused(None)()  # warm
    for c in counts:
        sets = torch.randint(0, c, (vocab,), generator=g)
        pairs = interleaved({"none": fused(None), "sets": fused(sets)}, n_pairs, alternate=True, verbose=False)
        ratios = [t["sets"] / t["none"] for t in pairs["rounds"]]
        out[str(c)] = {"median": statistics.median(ratios), "min": min(ratios), "ratios": ratios}
        print(f"{c} dense sets over none, {n_pairs} pairs: median {out[str(c)]['median']:.3f}, "
              f"min {out[str(c)]['min']:.3f}", flush=True)
    return out


if __name__ == "__main__":
    main()
