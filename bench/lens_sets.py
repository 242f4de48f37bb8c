"""What token-set mass costs ops.lens_stats on the cpu backend: the same sweep without sets, with 8 sets
covering the whole vocabulary (every logit is in a set: the worst case) and with 8 sets of 1,000 tokens
in all (frequency buckets, answer options), side by side on the same inputs, rounds interleaved.

    python bench/lens_sets.py --tokens 512 --rounds 3
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from lens_cpu import make_inputs  # noqa: E402
from measure import write_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "lens_sets.json"))
    args = ap.parse_args()

    from fusedlens import ops

    hidden, norm, unembed, targets = make_inputs(args.tokens, args.vocab)
    g = torch.Generator().manual_seed(1)
    dense = torch.randint(0, 8, (args.vocab,), generator=g)
    sparse = torch.full((args.vocab,), -1)
    sparse[torch.randperm(args.vocab, generator=g)[:1000]] = torch.arange(1000) % 8
    variants = {"no_sets": None, "8_sets_whole_vocab": dense, "8_sets_1000_tokens": sparse}
    best = {}
    for r in range(args.rounds):
        for name, sets in variants.items():
            t0 = time.perf_counter()
            ops.lens_stats(hidden, norm, unembed, targets, 5, backend="cpu", token_sets=sets)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
        print(f"round {r}: " + ", ".join(f"{k} {v:.2f} s" for k, v in best.items()), flush=True)
    ratios = {k: v / best["no_sets"] for k, v in best.items()}
    print({k: round(v, 3) for k, v in ratios.items()})
    write_result({"tokens": args.tokens, "vocab": args.vocab, "sites": hidden.shape[0], "rounds": args.rounds,
                  "threads": torch.get_num_threads(), "seconds": best, "over_no_sets": ratios,
                  "load_average": list(os.getloadavg())}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
