"""The full residual causal-tracing grid of a 16-token prompt on SmolLM2: batched vs one forward per patch.

(30 blocks + the embedding) × 16 positions = 496 patches; `fusedlens.intervene.patching.patch` runs
them --batch-size rows per forward; the baseline runs the same edits one forward each. Both give the
same grid (checked). Writes bench/results/patch_speed.json.

    python bench/patch_speed.py
"""
import argparse
import os
import time

import torch

from measure import write_result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "patch_speed.json"))
    args = ap.parse_args()

    from fusedlens import load_model
    from fusedlens.intervene.patching import patch

    lm = load_model()
    clean = "As everyone knows, the Eiffel Tower is a landmark located in the city of"
    bad = "As everyone knows, the Colosseum is a landmark located in the city of"
    n = len(lm.tokenizer(clean)["input_ids"])
    assert n == 16 == len(lm.tokenizer(bad)["input_ids"]), n
    seconds = {}
    results = {}
    for name, size in (("batched", args.batch_size), ("one_per_patch", 1)):
        t0 = time.perf_counter()
        results[name] = patch(lm, clean, bad, " Paris", " Rome", kinds=("resid",), batch_size=size)
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.2f} s ({results[name].meta['forwards']} forwards)", flush=True)
    diff = float((results["batched"].values["resid"] - results["one_per_patch"].values["resid"]).abs().max())
    print(f"one per patch / batched: {seconds['one_per_patch'] / seconds['batched']:.1f}; max |metric difference| "
          f"{diff:.1e}")
    write_result({"tokens": n, "cells": results["batched"].meta["cells"], "batch_size": args.batch_size,
                  "seconds": seconds, "speedup": seconds["one_per_patch"] / seconds["batched"],
                  "max_metric_difference": diff, "threads": torch.get_num_threads(),
                  "clean_metric": results["batched"].clean, "corrupted_metric": results["batched"].corrupted,
                  "load_average": list(os.getloadavg())}, args.out)


if __name__ == "__main__":
    main()
