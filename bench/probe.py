"""What lags and user targets cost a probe run (fusedlens.probe): the single-target run (logit at lag 0)
against the same run with two lags (0 and -1) and a user target, side by side on the same corpus and
model, rounds interleaved; time (wall and the forward / targets / accumulate / solve split) and peak
RSS growth.

    python bench/probe.py --train-tokens 8000 --heldout-tokens 2000 --rounds 2   -> bench/results/probe_targets.json

The accumulation op alone (ops.ridge_gram): bench/ridge_gram.py.
"""
from common import arg_parser, interleaved, model, threads_from, write_result

VARIANTS = {
    "single": {"targets": ("logit",), "lags": (0,)},
    "two_lags_and_user_target": {"targets": ("logit",), "lags": (0, -1), "user": True},
}


def main():
    ap = arg_parser(__doc__, "probe_targets.json")
    ap.add_argument("--train-tokens", type=int, default=8000)
    ap.add_argument("--heldout-tokens", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    threads_from(args)

    from fusedlens.probe import fit_probes

    lm = model()
    # a user target: the position in the window, one value per real token of the batch
    user = {"position": lambda res: res.position.float()}
    runs = {name: (lambda v=v: fit_probes(lm, None, train_tokens=args.train_tokens,
                                          heldout_tokens=args.heldout_tokens, targets=v["targets"], lags=v["lags"],
                                          extra_targets=user if v.get("user") else None, progress=False))
            for name, v in VARIANTS.items()}
    res = interleaved(runs, args.rounds, memory=True, keep=True)
    best = res["best"]
    ratio = best["two_lags_and_user_target"] / best["single"]
    print(f"targets: { {k: r.targets for k, r in res['out'].items()} }")
    print(f"two lags + a user target / single target: {ratio:.3f}")
    write_result({"train_tokens": args.train_tokens, "heldout_tokens": args.heldout_tokens, "rounds": args.rounds,
                  "variants": {k: {**v, "lags": list(v["lags"])} for k, v in VARIANTS.items()},
                  "seconds": best, "timing": {k: r.meta["timing"] for k, r in res["out"].items()},
                  "peak_rss_growth_mib": res["peak_rss_mib"], "ratio": ratio}, args.out)


if __name__ == "__main__":
    main()
