"""Activation patching (fusedlens.intervene.patching.patch) on SmolLM2: the residual causal-tracing grid of
the Eiffel pair three ways, and TransformerLens' per-cell loop on the same cells.

    python bench/patch.py                -> bench/results/patch_speed.json
    python bench/patch.py --no-peer      (without TransformerLens)

reuse: each patch reruns only its block and the ones above, from its position on, on the corrupted
run's key/value cache (intervene.suffix); full: the whole corrupted forward per cell, --batch-size rows
per forward (fusedlens before); tl_per_cell: TransformerLens 4's `get_act_patch_resid_pre` on its
TransformerBridge over the same HF model, one forward per cell (run once; fusedlens' variants are the
best of --rounds interleaved rounds). Cells: the input of every block at
every position, 30 × 9 = 270 (fusedlens' "resid" grid adds the last block's output: its rows 0-29
are TransformerLens' grid, compared value by value).
"""
import time

import torch

from common import arg_parser, machine_info, model, threads_from, write_result

CLEAN = "The Eiffel Tower is in the city of"
CORRUPTED = "The Colosseum is in the city of"


def tl_grid(lm, clean_ids, bad_ids, a, b):
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    lm.model.config.architectures = [type(lm.model).__name__]
    tl = TransformerBridge.boot_transformers(lm.model.config.name_or_path or "model", hf_model=lm.model,
                                             tokenizer=lm.tokenizer, device="cpu")
    with torch.no_grad():
        _, cache = tl.run_with_cache(clean_ids[None])
        t0 = time.perf_counter()
        grid = patching.get_act_patch_resid_pre(tl, bad_ids[None], cache,
                                                lambda logits: logits[0, -1, a] - logits[0, -1, b])
    return time.perf_counter() - t0, grid.double()


def main():
    ap = arg_parser(__doc__, "patch_speed.json")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-peer", action="store_true", help="skip TransformerLens")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the fusedlens variants (best of)")
    args = ap.parse_args()
    threads_from(args)

    from fusedlens.intervene.patching import patch

    lm = model()
    clean_ids, bad_ids = (torch.tensor(lm.tokenizer(t)["input_ids"]) for t in (CLEAN, CORRUPTED))
    assert clean_ids.numel() == bad_ids.numel() == 9
    a, b = (lm.tokenizer(t)["input_ids"][0] for t in (" Paris", " Rome"))
    seconds, grids = {}, {}
    patch(lm, CLEAN, CORRUPTED, " Paris", " Rome", kinds=("resid",), batch_size=args.batch_size)  # warm-up
    for _ in range(args.rounds):  # interleaved rounds, the best of each
        for name, reuse in (("reuse", True), ("full", False)):
            t0 = time.perf_counter()
            r = patch(lm, CLEAN, CORRUPTED, " Paris", " Rome", kinds=("resid",), batch_size=args.batch_size,
                      reuse=reuse)
            seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - t0)
            grids[name] = r.values["resid"][:lm.n_layers]  # block inputs: TransformerLens' resid_pre
            print(f"{name}: {time.perf_counter() - t0:.2f} s, {r.meta['cells']} cells in {r.meta['forwards']} "
                  "forwards", flush=True)
    diffs = {"reuse_vs_full": float((grids["reuse"] - grids["full"]).abs().max())}
    if not args.no_peer:
        seconds["tl_per_cell"], grids["tl"] = tl_grid(lm, clean_ids, bad_ids, a, b)
        print(f"tl_per_cell: {seconds['tl_per_cell']:.2f} s ({grids['tl'].numel()} cells)", flush=True)
        diffs["reuse_vs_tl"] = float((grids["reuse"] - grids["tl"]).abs().max())
    per_cell = {k: v / (grids["tl"].numel() if k == "tl_per_cell" else r.meta["cells"]) for k, v in seconds.items()}
    speedups = {f"{k}_over_reuse": per_cell[k] / per_cell["reuse"] for k in per_cell if k != "reuse"}
    print("per cell (ms): " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in per_cell.items()) + "; "
          + ", ".join(f"{k} {v:.1f}x" for k, v in speedups.items()) + "; max |difference| "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    write_result({"clean": CLEAN, "corrupted": CORRUPTED, "tokens": 9, "cells": r.meta["cells"],
                  "tl_cells": grids["tl"].numel() if "tl" in grids else None, "batch_size": args.batch_size, "rounds": args.rounds,
                  "seconds": seconds, "seconds_per_cell": per_cell, "speedups": speedups, "max_difference": diffs,
                  "machine": machine_info()}, args.out)


if __name__ == "__main__":
    main()
