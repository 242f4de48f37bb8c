"""What lags and user targets cost a probe run: the single-target run (logit at lag 0) against the same
run with two lags (0 and -1) and a user target, side by side on the same corpus and model, rounds
interleaved; time (wall and the forward / targets / accumulate / solve split) and peak RSS growth.

    python bench/probe_targets.py --train-tokens 8000 --heldout-tokens 2000 --rounds 2
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from measure import peak_rss_kib, reset_peak_rss, write_result  # noqa: E402

VARIANTS = {
    "single": {"targets": ("logit",), "lags": (0,)},
    "two_lags_and_user_target": {"targets": ("logit",), "lags": (0, -1), "user": True},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-tokens", type=int, default=8000)
    ap.add_argument("--heldout-tokens", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "probe_targets.json"))
    args = ap.parse_args()

    from fusedlens import load_model
    from fusedlens.probe import probe

    lm = load_model()
    # a user target: the position in the window, one value per real token of the batch
    user = {"position": lambda res: res.position.float()}
    best, splits, rss = {}, {}, {}
    for r in range(args.rounds):
        for name, v in VARIANTS.items():
            base = reset_peak_rss()
            t0 = time.perf_counter()
            result = probe(lm, None, train_tokens=args.train_tokens, heldout_tokens=args.heldout_tokens,
                           targets=v["targets"], lags=v["lags"], extra_targets=user if v.get("user") else None,
                           progress=False)
            t = time.perf_counter() - t0
            rss[name] = max(rss.get(name, 0.0), (peak_rss_kib() - base) / 1024)
            if t < best.get(name, float("inf")):
                best[name], splits[name] = t, result.meta["timing"]
            print(f"round {r} {name}: {t:.1f} s, targets {result.targets}", flush=True)
    ratio = best["two_lags_and_user_target"] / best["single"]
    print(f"two lags + a user target / single target: {ratio:.3f}")
    write_result({"train_tokens": args.train_tokens, "heldout_tokens": args.heldout_tokens, "rounds": args.rounds,
                  "threads": torch.get_num_threads(), "variants": {k: {**VARIANTS[k], "lags": list(VARIANTS[k]["lags"])}
                                                                   for k in VARIANTS},
                  "seconds": best, "timing": splits, "peak_rss_growth_mib": rss, "ratio": ratio,
                  "load_average": list(os.getloadavg())}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
