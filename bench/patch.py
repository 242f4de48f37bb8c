"""Activation patching (fusedlens.intervene.patching.patch) on SmolLM2: the full residual causal-tracing
grid of a 16-token prompt, batched vs one forward per patch.

    python bench/patch.py     -> bench/results/patch_speed.json

(30 blocks + the embedding) × 16 positions = 496 patches (Meng et al. 2022's causal tracing); `patch`
runs them --batch-size rows per forward; the baseline runs the same edits one forward each. Both give
the same grid (checked).
"""
import time

from common import arg_parser, model, threads_from, write_result

CLEAN = "As everyone knows, the Eiffel Tower is a landmark located in the city of"
CORRUPTED = "As everyone knows, the Colosseum is a landmark located in the city of"


def main():
    ap = arg_parser(__doc__, "patch_speed.json")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    threads_from(args)

    from fusedlens.intervene.patching import patch

    lm = model()
    n = len(lm.tokenizer(CLEAN)["input_ids"])
    assert n == 16 == len(lm.tokenizer(CORRUPTED)["input_ids"]), n
    seconds = {}
    results = {}
    for name, size in (("batched", args.batch_size), ("one_per_patch", 1)):
        t0 = time.perf_counter()
        results[name] = patch(lm, CLEAN, CORRUPTED, " Paris", " Rome", kinds=("resid",), batch_size=size)
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.2f} s ({results[name].meta['forwards']} forwards)", flush=True)
    diff = float((results["batched"].values["resid"] - results["one_per_patch"].values["resid"]).abs().max())
    print(f"one per patch / batched: {seconds['one_per_patch'] / seconds['batched']:.1f}; max |metric difference| "
          f"{diff:.1e}")
    write_result({"tokens": n, "cells": results["batched"].meta["cells"], "batch_size": args.batch_size,
                  "seconds": seconds, "speedup": seconds["one_per_patch"] / seconds["batched"],
                  "max_metric_difference": diff, "clean_metric": results["batched"].clean,
                  "corrupted_metric": results["batched"].corrupted}, args.out)


if __name__ == "__main__":
    main()
