"""The whole `fusedlens run` job vs the same job written naively, on the embedded model.

python bench/run_job.py [--tokens 2048] [--seq-len 512] [--out bench/results/run_job.json]

naive: HF forward with output_hidden_states=True, then per layer the final norm,
materialised logits, log_softmax, top-k, gather and KL, aggregated the same way.
Both see the same packed pydoc sequences; each runs in a fresh process.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch


def naive_job(tokens: int, seq_len: int) -> dict:
    from fusedlens.aggregate import LensAggregate
    from fusedlens.corpus import iter_sequences
    from fusedlens.models import load_model
    from fusedlens.reference import stats_from_logits

    lm = load_model()
    model = lm.model
    seqs = list(iter_sequences(lm.tokenizer, ["pydoc"], seq_len, stop=-(-tokens // seq_len)))
    agg = None
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in seqs:
            out = model(input_ids=s.ids[None], output_hidden_states=True, use_cache=False)
            # hidden_states[-1] is post-norm in HF; the pre-norm last residual is what the lens decodes
            hs = out.hidden_states[:-1]  # embedding and blocks 0..L-2; the last block's lens is the model's logits
            logits = [lm.unembed(lm.norm(h[0])) for h in hs] + [out.logits[0]]
            z = torch.stack(logits)
            targets = torch.full((s.ids.numel(),), -100)
            targets[:-1] = s.ids[1:]
            stats = stats_from_logits(z, targets, 5)
            agg = agg or LensAggregate([f"h{i}" for i in range(z.shape[0])], lm.vocab_size)
            agg.update(stats, targets)
    return {"seconds": time.perf_counter() - t0, "tokens": agg.tokens}


def fused_job(tokens: int, seq_len: int) -> dict:
    from fusedlens.runner import RunConfig, run

    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig(corpus=["pydoc"], out=out, seq_len=seq_len, batch_size=1, max_tokens=tokens, progress=False)
        t0 = time.perf_counter()
        summary = run(cfg)
        seconds = time.perf_counter() - t0
        with open(os.path.join(out, "throughput.json")) as f:
            split = json.load(f)
    # the pictures at the end are not part of the comparison
    return {"seconds": sum(split["seconds"].values()), "wall_with_pictures_and_load": seconds,
            "tokens": summary["tokens"], "split_seconds": split["seconds"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "run_job.json"))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        fn = {"fused": fused_job, "naive": naive_job}[args.one]
        print(json.dumps(fn(args.tokens, args.seq_len)))
        return
    res = {}
    for variant in ("fused", "naive"):
        done = subprocess.run([sys.executable, __file__, "--one", variant, "--tokens", str(args.tokens),
                               "--seq-len", str(args.seq_len)], capture_output=True, text=True, check=True)
        res[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(variant, res[variant], flush=True)
    row = {"tokens": args.tokens, "seq_len": args.seq_len, "results": res,
           "naive_over_fused": res["naive"]["seconds"] / res["fused"]["seconds"],
           "fused_tokens_per_second": res["fused"]["tokens"] / res["fused"]["seconds"],
           "load_average": os.getloadavg()}
    print({k: v for k, v in row.items() if k != "results"})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(row, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
