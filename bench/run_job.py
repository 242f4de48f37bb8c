"""The whole `fusedlens run` job vs the same job written naively, on the embedded model.

python bench/run_job.py [--tokens 2048] [--seq-len 512]      -> bench/results/run_job.json
python bench/run_job.py --interleaved ROUNDS [...]            -> bench/results/run_job_interleaved.json
pytest bench/run_job.py --benchmark-json=bench/results/run_job_pytest.json   (pytest-benchmark, 256 tokens)

naive: HF forward with output_hidden_states=True, then per layer the final norm,
materialised logits, log_softmax, top-k, gather and KL, aggregated the same way.
floor: the same forward and the bare GEMM of every site's normalised rows with W_U
(what no lens job can avoid). All see the same packed pydoc sequences. By default
each runs in a fresh process (with its peak RSS); --interleaved runs them in one
process, in turns, and keeps each one's best time (a shared machine's load then
hits them alike).
"""
import argparse
import json
import os
import tempfile
import time

import pytest
import torch

from common import (arg_parser, in_fresh_process, interleaved, model, peak_rss_kib, pydoc_sequences, result_path,
                    threads_from, write_result)


def naive_job(tokens: int, seq_len: int, lm=None) -> dict:
    from fusedlens.lens.aggregate import LensAggregate
    from fusedlens.ops.reference import stats_from_logits

    lm = lm or model()
    seqs = pydoc_sequences(lm, tokens, seq_len)
    agg = None
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in seqs:
            out = lm.model(input_ids=s.ids[None], output_hidden_states=True, use_cache=False)
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


def floor_job(tokens: int, seq_len: int, lm=None) -> dict:
    lm = lm or model()
    seqs = pydoc_sequences(lm, tokens, seq_len)
    w = lm.unembed.weight.float()
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in seqs:
            out = lm.model(input_ids=s.ids[None], output_hidden_states=True, use_cache=False)
            rows = torch.cat([lm.norm(h[0]).float() for h in out.hidden_states[:-1]])
            for chunk in rows.split(2048):  # every site at once, as the fused sweep reads W
                torch.mm(chunk, w.T)
    return {"seconds": time.perf_counter() - t0, "tokens": sum(s.ids.numel() for s in seqs)}


def fused_job(tokens: int, seq_len: int, lm=None, compute: str = "auto") -> dict:
    from fusedlens.job import RunConfig, run_corpus

    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig(corpus=["pydoc"], out=out, seq_len=seq_len, batch_size=1, max_tokens=tokens, progress=False,
                        compute=compute)
        t0 = time.perf_counter()
        summary = run_corpus(cfg, lm=lm)
        seconds = time.perf_counter() - t0
        with open(os.path.join(out, "throughput.json")) as f:
            split = json.load(f)
    # the pictures at the end are not part of the comparison
    return {"seconds": sum(split["seconds"].values()), "wall_with_pictures_and_load": seconds,
            "tokens": summary["tokens"], "split_seconds": split["seconds"]}


def fused_bf16_job(tokens: int, seq_len: int, lm=None) -> dict:
    """`fusedlens run --compute bf16`: the lens GEMM on bf16 operands (fp32 model)."""
    return fused_job(tokens, seq_len, lm, compute="bf16")


JOBS = {"fused": fused_job, "fused_bf16": fused_bf16_job, "naive": naive_job, "floor": floor_job}


def ratios(value: dict, suffix: str = "") -> dict:
    """a_over_b for the pairs of jobs the note quotes, where both ran."""
    pairs = (("naive", "fused"), ("naive", "fused_bf16"), ("fused", "floor"), ("fused_bf16", "fused"))
    return {f"{a}_over_{b}{suffix}": value[a] / value[b] for a, b in pairs if a in value and b in value}


def interleaved_row(tokens: int, seq_len: int, rounds: int, names: list[str]) -> dict:
    lm = model()
    jobs = {name: (lambda job=JOBS[name]: job(tokens, seq_len, lm)) for name in names}
    best = interleaved(jobs, rounds, warmup=True, seconds_of=lambda r: r["seconds"])["best"]
    return {"mode": "interleaved", "tokens": tokens, "seq_len": seq_len, "rounds": rounds, "seconds": best,
            **ratios(best), "tokens_per_second": {name: tokens / t for name, t in best.items()}}


def main():
    ap = arg_parser(__doc__, "run_job.json")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                    help="the jobs in one process, in turns (default --out bench/results/run_job_interleaved.json)")
    ap.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS), help="which jobs (default all)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    threads_from(args)
    if args.one:
        res = JOBS[args.one](args.tokens, args.seq_len)
        print(json.dumps({**res, "peak_rss_mib": peak_rss_kib() / 1024}))
        return
    if args.interleaved:
        row = interleaved_row(args.tokens, args.seq_len, args.interleaved, args.jobs)
        print(row)
        write_result(row, args.out if args.out != ap.get_default("out") else result_path("run_job_interleaved.json"))
        return
    res = {}
    for variant in args.jobs:
        res[variant] = in_fresh_process(__file__, ["--one", variant, "--tokens", args.tokens, "--seq-len", args.seq_len])
        print(variant, res[variant], flush=True)
    row = {"tokens": args.tokens, "seq_len": args.seq_len, "results": res,
           **ratios({k: r["seconds"] for k, r in res.items()}),
           **ratios({k: r["peak_rss_mib"] for k, r in res.items()}, "_peak_rss"),
           "tokens_per_second": {k: r["tokens"] / r["seconds"] for k, r in res.items()}}
    print({k: v for k, v in row.items() if k != "results"})
    write_result(row, args.out)


# ---------------------------------------------------------------- pytest-benchmark mode

@pytest.fixture(scope="module")
def lm():
    return model()


@pytest.mark.benchmark(group="run_job")
@pytest.mark.parametrize("job", list(JOBS))
def test_run_job(benchmark, lm, job):
    benchmark.pedantic(JOBS[job], (256, 128, lm), rounds=2, warmup_rounds=1)


if __name__ == "__main__":
    main()
