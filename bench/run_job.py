"""The whole `fusedlens run` job vs the same job written naively and vs a peer, on a real model.

python bench/run_job.py [--tokens 2048] [--seq-len 512] [--model gemma-3-270m]   -> bench/results/run_job.json
python bench/run_job.py --model gemma-3-270m --sweep 64 128 256 512 --out bench/results/run_job_gemma3_sweep.json
  fused and the peer at growing tokens per forward (seq_len), each in a fresh process held under
  --mem-limit-gib of address space: time, peak RSS, and where the peer runs out of memory.
python bench/run_job.py --interleaved ROUNDS [...]            -> bench/results/run_job_interleaved.json
pytest bench/run_job.py --benchmark-json=bench/results/run_job_pytest.json   (pytest-benchmark, 256 tokens)

naive: HF forward with output_hidden_states=True, then per layer the final norm,
materialised logits, log_softmax, top-k, gather and KL, aggregated the same way.
floor: the same forward and the bare GEMM of every site's normalised rows with W_U
(what no lens job can avoid). tl_bridge, the peer: TransformerLens 4's TransformerBridge over the
same HF model, every layer's logits materialised at once (`cache.accumulated_resid(apply_ln=True)`
and the unembedding), reduced as the naive job does. All see the same packed pydoc sequences. By default
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


MODEL = None  # --model: a name fusedlens knows (None: the embedded SmolLM2-135M)


def _materialised_job(lm, seqs, logits_of) -> dict:
    """The lens the naive way: every site's logits [sites, tokens, vocab] of a sequence at once
    (logits_of(ids)), reduced by the float64 reference's formulas into the per-site sums."""
    from fusedlens.lens.aggregate import LensAggregate
    from fusedlens.ops.reference import stats_from_logits

    agg = None
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in seqs:
            z = logits_of(s.ids[None])
            targets = torch.full((s.ids.numel(),), -100)
            targets[:-1] = s.ids[1:]
            agg = agg or LensAggregate([f"h{i}" for i in range(z.shape[0])], lm.vocab_size)
            agg.update(stats_from_logits(z, targets, 5), targets)
    return {"seconds": time.perf_counter() - t0, "tokens": agg.tokens}


def naive_job(tokens: int, seq_len: int, lm=None) -> dict:
    lm = lm or model(MODEL)

    def logits_of(ids):
        out = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False)
        # hidden_states[-1] is post-norm in HF; the pre-norm last residual is what the lens decodes
        hs = out.hidden_states[:-1]  # embedding and blocks 0..L-2; the last block's lens is the model's logits
        return torch.stack([lm.unembed(lm.norm(h[0])) for h in hs] + [out.logits[0]])
    return _materialised_job(lm, pydoc_sequences(lm, tokens, seq_len), logits_of)


def tl_bridge_job(tokens: int, seq_len: int, lm=None) -> dict:
    from transformer_lens.model_bridge import TransformerBridge

    lm = lm or model(MODEL)
    lm.model.config.architectures = [type(lm.model).__name__]  # a config read from a GGUF names none
    tl = TransformerBridge.boot_transformers(lm.model.config.name_or_path or "model", hf_model=lm.model,
                                             tokenizer=lm.tokenizer, device="cpu")

    def logits_of(ids):
        _, cache = tl.run_with_cache(ids)
        return tl.unembed(cache.accumulated_resid(apply_ln=True))[:, 0]  # [sites, tokens, vocab], all at once
    return _materialised_job(lm, pydoc_sequences(lm, tokens, seq_len), logits_of)


def floor_job(tokens: int, seq_len: int, lm=None) -> dict:
    lm = lm or model(MODEL)
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

    lm = lm or model(MODEL)
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


JOBS = {"fused": fused_job, "fused_bf16": fused_bf16_job, "naive": naive_job, "floor": floor_job,
        "tl_bridge": tl_bridge_job}


def ratios(value: dict, suffix: str = "") -> dict:
    """a_over_b for the pairs of jobs the note quotes, where both ran."""
    pairs = (("naive", "fused"), ("naive", "fused_bf16"), ("fused", "floor"), ("fused_bf16", "fused"),
             ("tl_bridge", "fused"))
    return {f"{a}_over_{b}{suffix}": value[a] / value[b] for a, b in pairs if a in value and b in value}


def interleaved_row(tokens: int, seq_len: int, rounds: int, names: list[str]) -> dict:
    lm = model(MODEL)
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
    ap.add_argument("--jobs", nargs="+", choices=list(JOBS), default=None,
                    help="which jobs (default all but tl_bridge; with --sweep: fused and tl_bridge)")
    ap.add_argument("--model", default=None, help="gemma-3-270m or smollm2-135m (default: the embedded SmolLM2)")
    ap.add_argument("--sweep", type=int, nargs="+", default=None, metavar="SEQ_LEN",
                    help="time and peak RSS at these tokens per forward (two sequences each)")
    ap.add_argument("--mem-limit-gib", type=float, default=22.0, help="address-space limit of each job's process")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    threads_from(args)
    global MODEL
    MODEL = args.model
    if args.one:
        import resource

        limit = int(args.mem_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # out of memory: an error here, not the OOM killer
        res = JOBS[args.one](args.tokens, args.seq_len)
        lm = model(MODEL)  # the one the job ran (cached): named in its result
        print(json.dumps({**res, "peak_rss_mib": peak_rss_kib() / 1024, "model": lm.describe()["model"],
                          "vocab": lm.vocab_size}))
        return
    model_args = ["--model", args.model] if args.model else []
    if args.sweep:
        sweep(args.sweep, args.jobs or ["fused", "tl_bridge"], model_args, args.mem_limit_gib, args.out)
        return
    args.jobs = args.jobs or [j for j in JOBS if j != "tl_bridge"]
    if args.interleaved:
        row = interleaved_row(args.tokens, args.seq_len, args.interleaved, args.jobs)
        print(row)
        write_result(row, args.out if args.out != ap.get_default("out") else result_path("run_job_interleaved.json"))
        return
    res = {}
    for variant in args.jobs:
        res[variant] = in_fresh_process(__file__, ["--one", variant, "--tokens", args.tokens, "--seq-len", args.seq_len,
                                                   *model_args, "--mem-limit-gib", args.mem_limit_gib])
        print(variant, res[variant], flush=True)
    row = {"model": args.model or "smollm2-135m", "tokens": args.tokens, "seq_len": args.seq_len, "results": res,
           **ratios({k: r["seconds"] for k, r in res.items()}),
           **ratios({k: r["peak_rss_mib"] for k, r in res.items()}, "_peak_rss"),
           "tokens_per_second": {k: r["tokens"] / r["seconds"] for k, r in res.items()}}
    print({k: v for k, v in row.items() if k != "results"})
    write_result(row, args.out)


def sweep(seq_lens: list[int], jobs: list[str], model_args: list, mem_limit_gib: float, out: str) -> None:
    """Each job at each seq_len (two sequences), in fresh processes; a job that runs out of memory is
    recorded as such and not run at larger sizes."""
    rows, failed = [], set()
    for seq_len in seq_lens:
        row = {"seq_len": seq_len, "tokens": 2 * seq_len}
        for job in jobs:
            if job in failed:
                row[job] = {"skipped": "ran out of memory at a smaller size"}
                continue
            try:
                r = in_fresh_process(__file__, ["--one", job, "--tokens", 2 * seq_len, "--seq-len", seq_len,
                                                *model_args, "--mem-limit-gib", mem_limit_gib])
                row[job] = {**r, "tokens_per_second": r["tokens"] / r["seconds"]}
            except SystemExit as err:  # the child's error: out of memory under the limit, or another failure
                tail = str(err).strip().splitlines()[-1][:300]
                row[job] = {"failed": tail}
                failed.add(job)
            print(seq_len, job, row[job], flush=True)
        rows.append(row)
    write_result({"mode": "sweep", "model": (model_args or [None, "smollm2-135m"])[1], "jobs": jobs,
                  "mem_limit_gib": mem_limit_gib, "rows": rows}, out)


# ---------------------------------------------------------------- pytest-benchmark mode

@pytest.fixture(scope="module")
def lm():
    return model(MODEL)


@pytest.mark.benchmark(group="run_job")
@pytest.mark.parametrize("job", list(JOBS))
def test_run_job(benchmark, lm, job):
    benchmark.pedantic(JOBS[job], (256, 128, lm), rounds=2, warmup_rounds=1)


if __name__ == "__main__":
    main()
