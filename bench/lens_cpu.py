"""Fused lens_stats vs naive PyTorch vs the bare GEMM, each in a fresh process.

python bench/lens_cpu.py [--tokens 2048] [--vocabs 49152 128256] [--out bench/results/lens_cpu.json]
Writes times, ratios and peak RSS (the op's growth over its inputs: Linux's VmHWM,
reset after the inputs are built) per variant.

python bench/lens_cpu.py --per-isa 3 --tokens 1024 --vocabs 49152
  -> bench/results/lens_cpu_per_isa.json: fused vs the bare GEMM at every ISA level of this CPU,
     each level in its own process with MKL and ATen held to that level.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
from measure import peak_rss_kib, reset_peak_rss, write_result

SITES, D_MODEL = 31, 576
VARIANTS = ("bare_gemm", "own_tile_gemm", "fused_cpu", "fused_cpu_bf16", "naive_torch")


def make_inputs(tokens, vocab, seed=0):
    from fusedlens import FinalNorm, Unembed

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(SITES, tokens, D_MODEL, generator=g)
    norm = FinalNorm("rmsnorm", torch.rand(D_MODEL, generator=g) + 0.5, None, 1e-5)
    unembed = Unembed(torch.randn(vocab, D_MODEL, generator=g).div_(D_MODEL ** 0.5))
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    return hidden, norm, unembed, targets


def naive(hidden, norm, unembed, targets, k=5):
    """What one writes without fusedlens: materialise each layer's logits, then reduce."""
    xn = norm(hidden)
    w = unembed.weight
    logp_final = torch.log_softmax(xn[-1] @ w.T, -1)
    p_final = logp_final.exp()
    out = []
    for s in range(xn.shape[0]):
        logits = xn[s] @ w.T
        logp = torch.log_softmax(logits, -1)
        top = torch.topk(logits, k, -1)
        tgt = logits.gather(-1, targets[:, None])
        out.append((torch.logsumexp(logits, -1), -(logp.exp() * logp).sum(-1), top.indices, top.values,
                    logp.gather(-1, targets[:, None]), (logits > tgt).sum(-1),
                    (p_final * (logp_final - logp)).sum(-1)))
    return out


def bare_gemm(xn, w):
    """The floor: the same FLOPs as the lens, one layer's logits at a time into one buffer."""
    out = torch.empty(xn.shape[1], w.shape[0])
    for s in range(xn.shape[0]):
        torch.matmul(xn[s], w.T, out=out)
    return out


def run_variant(variant, tokens, vocab, repeats):
    from fusedlens import ops
    from fusedlens.core.backends import _C
    from fusedlens.ops.lens_stats import ROWS_PER_BLOCK

    hidden, norm, unembed, targets = make_inputs(tokens, vocab)
    unembed_bf16 = type(unembed)(unembed.weight.bfloat16()) if variant == "fused_cpu_bf16" else None
    fn = {"fused_cpu": lambda: ops.lens_stats(hidden, norm, unembed, targets, 5, backend="cpu"),
          "fused_cpu_bf16": lambda: ops.lens_stats(hidden, norm, unembed_bf16, targets, 5, backend="cpu"),
          "naive_torch": lambda: naive(hidden, norm, unembed, targets),
          "bare_gemm": lambda: bare_gemm(norm(hidden), unembed.weight),
          "own_tile_gemm": lambda: _C.sweep_floor(norm(hidden), unembed.weight, max(8, ROWS_PER_BLOCK // SITES), 1024)}[variant]
    base = reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_kib()
    return {"variant": variant, "tokens": tokens, "vocab": vocab, "sites": SITES, "d_model": D_MODEL,
            "seconds": min(times), "peak_rss_growth_mib": (peak - base) / 1024, "threads": torch.get_num_threads()}


def machine():
    return {"load_average": os.getloadavg()}  # write_result adds the CPU, its ISA and the kernel variants


def interleaved(tokens, vocab, rounds, isas=(), variants=VARIANTS):
    """Timing only: all variants in one process, on the same inputs, in turns (shared-machine noise
    hits them alike); the best of `rounds` per variant. `isas`: also the fused op with the kernels
    forced to each of these ISA levels (fused_cpu@avx2, ...)."""
    from fusedlens import ops
    from fusedlens.core.backends import _C

    hidden, norm, unembed, targets = make_inputs(tokens, vocab)
    unembed_bf16 = type(unembed)(unembed.weight.bfloat16())
    xn = norm(hidden)
    default = _C.isa()

    def at(isa, fn):
        def call():
            _C.set_isa(isa)
            try:
                return fn()
            finally:
                _C.reset_isa()
        return call

    fused = lambda: ops.lens_stats(hidden, norm, unembed, targets, 5, backend="cpu")  # noqa: E731
    from fusedlens.ops.lens_stats import ROWS_PER_BLOCK

    # our own tile GEMM alone: the sweep lens_stats runs, grouped as it is, with no epilogue
    own = lambda: _C.sweep_floor(xn, unembed.weight, max(8, ROWS_PER_BLOCK // xn.shape[0]), 1024)  # noqa: E731
    fns = {"bare_gemm": lambda: bare_gemm(xn, unembed.weight), "own_tile_gemm": own, "fused_cpu": fused,
           "fused_cpu_bf16": lambda: ops.lens_stats(hidden, norm, unembed_bf16, targets, 5, backend="cpu"),
           "naive_torch": lambda: naive(hidden, norm, unembed, targets)}
    fns = {name: fn for name, fn in fns.items() if name in variants}
    fns.update({f"fused_cpu@{isa}": at(isa, fused) for isa in isas if isa != default})
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    per_isa = {default: best["fused_cpu"] / best["bare_gemm"]}
    per_isa.update({name.split("@")[1]: t / best["bare_gemm"] for name, t in best.items() if "@" in name})
    ratio = lambda a, b: best[a] / best[b] if a in best and b in best else None  # noqa: E731
    return {"vocab": vocab, "tokens": tokens, "sites": SITES, "isa": default, "seconds": best,
            "gflops": {name: 2 * SITES * tokens * D_MODEL * vocab / t / 1e9 for name, t in best.items()},
            "fused_over_gemm": ratio("fused_cpu", "bare_gemm"), "fused_over_gemm_by_isa": per_isa,
            "fused_over_own_tile_gemm": ratio("fused_cpu", "own_tile_gemm"),
            "own_tile_gemm_over_gemm": ratio("own_tile_gemm", "bare_gemm"),
            "naive_over_fused": ratio("naive_torch", "fused_cpu"),
            "bf16_over_fp32_fused": ratio("fused_cpu_bf16", "fused_cpu"), "load_average": os.getloadavg()}


# What a CPU of each level runs: our kernels forced to it, and MKL's GEMM (the floor) and ATen's
# vector code held to the same instructions, so that e.g. "avx2" is a Zen 3 as far as software goes.
LIBRARY_LEVELS = {"generic": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"},
                  "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
                  "avx512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ATEN_CPU_CAPABILITY": "avx512"},
                  "avx512bf16": {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ATEN_CPU_CAPABILITY": "avx512"}}


def per_isa(tokens, vocab, rounds, out, threads=0, peaks_path=None):
    """Fused vs the bare GEMM at every ISA level this CPU supports, each level in its own process
    with the libraries held to it; each figure also as a share of the measured FMA peak
    (bench/fma_peak.py) of the vector width that level uses."""
    import tempfile

    from fusedlens.core.cpu import supported_isas

    peaks_path = peaks_path or os.path.join(os.path.dirname(out), "fma_peak.json")
    peak_file = json.load(open(peaks_path)) if os.path.exists(peaks_path) else {"gflops_peak": {}, "machine": {}}
    peaks, peak_threads = peak_file["gflops_peak"], peak_file["machine"].get("torch_threads", 1)
    rows = []
    for isa in supported_isas():
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            env = {**os.environ, "FUSEDLENS_ISA": isa, **LIBRARY_LEVELS[isa]}
            subprocess.run([sys.executable, __file__, "--interleaved", str(rounds), "--tokens", str(tokens),
                            "--vocabs", str(vocab), "--variants", "bare_gemm", "own_tile_gemm", "fused_cpu", "--out", tmp.name,
                            "--threads", str(threads)],
                           env=env, check=True, capture_output=True)
            row = json.load(open(tmp.name))["rows"][0]
        peak = peaks.get("avx512" if isa.startswith("avx512") else "avx2" if isa == "avx2" else "", None)
        if peak:  # the peak of the threads this run used (the peak file measured all of them)
            peak *= (threads or torch.get_num_threads()) / peak_threads
        row.update(library_env=LIBRARY_LEVELS[isa], threads=threads or torch.get_num_threads(), fma_peak_gflops=peak,
                   share_of_peak={k: v / peak for k, v in row["gflops"].items()} if peak else None)
        print(isa, {k: row[k] for k in ("seconds", "fused_over_gemm", "fused_over_own_tile_gemm", "share_of_peak")},
              flush=True)
        rows.append(row)
    write_result({"machine": machine(), "mode": "per_isa", "rows": rows}, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocabs", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "lens_cpu.json"))
    ap.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                    help="time the variants in one process, in turns (no memory figures)")
    ap.add_argument("--isas", nargs="*", default=[], help="with --interleaved: also time the fused op with the "
                    "kernels forced to these ISA levels (generic avx2 avx512 avx512bf16)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="with --interleaved: which to time")
    ap.add_argument("--per-isa", type=int, default=0, metavar="ROUNDS", help="fused vs bare GEMM at every ISA "
                    "level of this CPU, each in its own process with MKL and ATen held to that level")
    ap.add_argument("--peaks", default=None, help="with --per-isa: this machine's bench/fma_peak.py result "
                    "(default: fma_peak.json beside --out)")
    ap.add_argument("--one", nargs=3, metavar=("VARIANT", "TOKENS", "VOCAB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_variant(args.one[0], int(args.one[1]), int(args.one[2]), args.repeats)))
        return
    if args.per_isa:
        out = args.out if args.out != ap.get_default("out") else args.out.replace("lens_cpu.json", "lens_cpu_per_isa.json")
        per_isa(args.tokens, args.vocabs[0], args.per_isa, out, args.threads, args.peaks)
        return
    if args.interleaved:
        rows = [interleaved(args.tokens, vocab, args.interleaved, args.isas, args.variants) for vocab in args.vocabs]
        for row in rows:
            print(row, flush=True)
        write_result({"machine": {**machine(), "MKL_ENABLE_INSTRUCTIONS": os.environ.get("MKL_ENABLE_INSTRUCTIONS")},
                      "mode": "interleaved", "rows": rows}, args.out)
        return
    rows = []
    for vocab in args.vocabs:
        res = {}
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, __file__, "--one", variant, str(args.tokens), str(vocab),
                                  "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            print(res[variant], flush=True)
        rows.append({"vocab": vocab, "tokens": args.tokens, "sites": SITES, "results": res,
                     "fused_over_gemm": res["fused_cpu"]["seconds"] / res["bare_gemm"]["seconds"],
                     "naive_over_fused": res["naive_torch"]["seconds"] / res["fused_cpu"]["seconds"],
                     "bf16_over_fp32_fused": res["fused_cpu_bf16"]["seconds"] / res["fused_cpu"]["seconds"],
                     "fused_over_naive_memory": res["fused_cpu"]["peak_rss_growth_mib"]
                     / max(res["naive_torch"]["peak_rss_growth_mib"], 1e-9)})
        print({k: v for k, v in rows[-1].items() if k != "results"}, flush=True)
    write_result({"machine": machine(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
