"""ops.lens_stats on the cpu backend: fused vs naive PyTorch vs the bare GEMM, on the same inputs.

python bench/lens_stats.py [--tokens 2048] [--vocabs 49152 128256]   -> bench/results/lens_stats.json
  each variant in a fresh process: times, ratios and peak RSS (the op's growth over its inputs:
  Linux's VmHWM, reset after the inputs are built), GFLOP/s and their share of the peak measured in
  the same run (bench/fma_peak.py: fp32 FMA for fp32 compute, the bf16 dot product for bf16).
python bench/lens_stats.py --shape gemma3 --tokens 256 --out bench/results/lens_stats_gemma3.json
  the same at Gemma 3 270M's shape: 19 sites x d 640 x vocabulary 262,144 (default 31 x 576, SmolLM2's).
python bench/lens_stats.py --interleaved ROUNDS [--isas avx2 ...] --out bench/results/lens_stats_interleaved.json
  timing only: the variants in one process, in turns (a shared machine's load hits them alike).
python bench/lens_stats.py --per-isa 3 --tokens 1024 --vocabs 49152   -> bench/results/lens_stats_per_isa.json
  fused vs the bare GEMM at every ISA level of this CPU, each level in its own process with MKL
  and ATen held to that level; also as a share of the FMA peak (bench/fma_peak.py).
pytest bench/lens_stats.py --benchmark-json=bench/results/lens_stats_pytest.json
  pytest-benchmark, 256 tokens to keep a run short.

Token-set mass: bench/lens_stats_sets.py; the Triton kernel on a GPU: bench/lens_stats_triton.py.
"""
import argparse
import json
import os
import tempfile

import pytest
import torch

from common import (arg_parser, in_fresh_process, interleaved, repeat, result_path, run_script, threads_from,
                    write_result)

SHAPES = {"smollm2": (31, 576, [49152, 128256]), "gemma3": (19, 640, [262144])}  # sites, d_model, vocabs
SITES, D_MODEL = SHAPES["smollm2"][:2]
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


def variants(hidden, norm, unembed, targets, names=VARIANTS) -> dict:
    """name -> fn() on these inputs. own_tile_gemm: our own tile GEMM alone, the sweep lens_stats runs,
    grouped as it is, with no epilogue."""
    from fusedlens import ops
    from fusedlens.core.backends import _C
    from fusedlens.ops.lens_stats import ROWS_PER_BLOCK

    xn = norm(hidden)
    unembed_bf16 = type(unembed)(unembed.weight.bfloat16()) if "fused_cpu_bf16" in names else None
    fns = {"bare_gemm": lambda: bare_gemm(xn, unembed.weight),
           "own_tile_gemm": lambda: _C.sweep_floor(xn, unembed.weight, max(8, ROWS_PER_BLOCK // SITES), 1024),
           "fused_cpu": lambda: ops.lens_stats(hidden, norm, unembed, targets, 5, backend="cpu"),
           "fused_cpu_bf16": lambda: ops.lens_stats(hidden, norm, unembed_bf16, targets, 5, backend="cpu"),
           "naive_torch": lambda: naive(hidden, norm, unembed, targets)}
    return {name: fns[name] for name in names}


def run_variant(variant, tokens, vocab, repeats):
    """One variant in this process (a fresh one, from main): best time and peak RSS growth."""
    fn = variants(*make_inputs(tokens, vocab), names=(variant,))[variant]
    r = repeat(fn, repeats, memory=True)
    return {"variant": variant, "tokens": tokens, "vocab": vocab, "sites": SITES, "d_model": D_MODEL,
            "seconds": r["seconds"], "peak_rss_growth_mib": r["peak_rss_growth_mib"]}


def at_isa(isa, fn):
    """fn with the kernels forced to one ISA level for the call."""
    from fusedlens.core.backends import _C

    def call():
        _C.set_isa(isa)
        try:
            return fn()
        finally:
            _C.reset_isa()
    return call


def interleaved_row(tokens, vocab, rounds, isas=(), names=VARIANTS):
    """All variants in one process, in turns; the best of `rounds` per variant. `isas`: also the fused op
    with the kernels forced to each of these ISA levels (fused_cpu@avx2, ...)."""
    from fusedlens.core.backends import _C

    fns = variants(*make_inputs(tokens, vocab), names=names)
    default = _C.isa()
    fns.update({f"fused_cpu@{isa}": at_isa(isa, fns["fused_cpu"]) for isa in isas if isa != default})
    best = interleaved(fns, rounds)["best"]
    per_isa = {default: best["fused_cpu"] / best["bare_gemm"]}
    per_isa.update({name.split("@")[1]: t / best["bare_gemm"] for name, t in best.items() if "@" in name})
    ratio = lambda a, b: best[a] / best[b] if a in best and b in best else None  # noqa: E731
    return {"vocab": vocab, "tokens": tokens, "sites": SITES, "isa": default, "seconds": best,
            "gflops": {name: 2 * SITES * tokens * D_MODEL * vocab / t / 1e9 for name, t in best.items()},
            "fused_over_gemm": ratio("fused_cpu", "bare_gemm"), "fused_over_gemm_by_isa": per_isa,
            "fused_over_own_tile_gemm": ratio("fused_cpu", "own_tile_gemm"),
            "own_tile_gemm_over_gemm": ratio("own_tile_gemm", "bare_gemm"),
            "naive_over_fused": ratio("naive_torch", "fused_cpu"),
            "bf16_over_fp32_fused": ratio("fused_cpu_bf16", "fused_cpu")}


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
    from fusedlens.core.cpu import supported_isas

    peaks_path = peaks_path or os.path.join(os.path.dirname(out), "fma_peak.json")
    peak_file = json.load(open(peaks_path)) if os.path.exists(peaks_path) else {"gflops_peak": {}, "machine": {}}
    peaks, peak_threads = peak_file["gflops_peak"], peak_file["machine"].get("torch_threads", 1)
    threads = threads or torch.get_num_threads()
    rows = []
    for isa in supported_isas():
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            run_script(__file__, ["--interleaved", rounds, "--tokens", tokens, "--vocabs", vocab, "--variants",
                                  "bare_gemm", "own_tile_gemm", "fused_cpu", "--out", tmp.name,
                                  "--threads", threads], env={"FUSEDLENS_ISA": isa, **LIBRARY_LEVELS[isa]})
            row = json.load(open(tmp.name))["rows"][0]
        peak = peaks.get("avx512" if isa.startswith("avx512") else "avx2" if isa == "avx2" else "", None)
        if peak:  # the peak of the threads this run used (the peak file measured all of them)
            peak *= threads / peak_threads
        row.update(library_env=LIBRARY_LEVELS[isa], threads=threads, fma_peak_gflops=peak,
                   share_of_peak={k: v / peak for k, v in row["gflops"].items()} if peak else None)
        print(isa, {k: row[k] for k in ("seconds", "fused_over_gemm", "fused_over_own_tile_gemm", "share_of_peak")},
              flush=True)
        rows.append(row)
    write_result({"mode": "per_isa", "rows": rows}, out)


def set_shape(name: str) -> None:
    global SITES, D_MODEL
    SITES, D_MODEL = SHAPES[name][:2]


def fresh_processes(tokens, vocabs, repeats, out, shape="smollm2"):
    from fma_peak import measure

    peaks = measure()  # in the same run, before and after the variants: the figures' own peak
    print("peaks (GFLOP/s):", peaks["gflops_peak"], flush=True)
    rows = []
    for vocab in vocabs:
        res = {}
        for variant in VARIANTS:
            res[variant] = in_fresh_process(__file__, ["--one", variant, tokens, vocab, "--repeats", repeats,
                                                       "--shape", shape])
            print(res[variant], flush=True)
        sec = {k: r["seconds"] for k, r in res.items()}
        flops = 2 * SITES * tokens * D_MODEL * vocab
        gflops = {k: flops / t / 1e9 for k, t in sec.items() if k != "naive_torch"}
        fp32_peak = max(v for k, v in peaks["gflops_peak"].items() if k != "bf16_dot")
        share = {k: v / (peaks["gflops_peak"].get("bf16_dot", fp32_peak) if k.endswith("bf16") else fp32_peak)
                 for k, v in gflops.items()}
        rows.append({"vocab": vocab, "tokens": tokens, "sites": SITES, "d_model": D_MODEL, "results": res,
                     "gflops": gflops, "share_of_peak": share,
                     "fused_over_gemm": sec["fused_cpu"] / sec["bare_gemm"],
                     "naive_over_fused": sec["naive_torch"] / sec["fused_cpu"],
                     "bf16_over_fp32_fused": sec["fused_cpu_bf16"] / sec["fused_cpu"],
                     "fused_over_naive_memory": res["fused_cpu"]["peak_rss_growth_mib"]
                     / max(res["naive_torch"]["peak_rss_growth_mib"], 1e-9)})
        print({k: v for k, v in rows[-1].items() if k != "results"}, flush=True)
        if max(share.values()) > 1:
            print(f"WARNING: a share above 100 % of the measured peak ({share}): the peak is broken", flush=True)
    peaks_after = measure()
    write_result({"shape": shape, "peaks": peaks, "peaks_after": peaks_after, "rows": rows}, out)


def main():
    ap = arg_parser(__doc__, "lens_stats.json")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--shape", choices=list(SHAPES), default="smollm2", help="sites x d_model of this model")
    ap.add_argument("--vocabs", type=int, nargs="+", default=None, help="default: the shape's own")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                    help="time the variants in one process, in turns (no memory figures)")
    ap.add_argument("--isas", nargs="*", default=[], help="with --interleaved: also time the fused op with the "
                    "kernels forced to these ISA levels (generic avx2 avx512 avx512bf16)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="with --interleaved: which to time")
    ap.add_argument("--per-isa", type=int, default=0, metavar="ROUNDS", help="fused vs bare GEMM at every ISA "
                    "level of this CPU, each in its own process with MKL and ATen held to that level")
    ap.add_argument("--peaks", default=None, help="with --per-isa: this machine's bench/fma_peak.py result "
                    "(default: fma_peak.json beside --out)")
    ap.add_argument("--one", nargs=3, metavar=("VARIANT", "TOKENS", "VOCAB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    threads_from(args)
    set_shape(args.shape)
    args.vocabs = args.vocabs or SHAPES[args.shape][2]
    if args.one:
        print(json.dumps(run_variant(args.one[0], int(args.one[1]), int(args.one[2]), args.repeats)))
    elif args.per_isa:
        out = args.out if args.out != ap.get_default("out") else result_path("lens_stats_per_isa.json")
        per_isa(args.tokens, args.vocabs[0], args.per_isa, out, args.threads, args.peaks)
    elif args.interleaved:
        rows = [interleaved_row(args.tokens, vocab, args.interleaved, args.isas, args.variants) for vocab in args.vocabs]
        for row in rows:
            print(row, flush=True)
        write_result({"machine": {"MKL_ENABLE_INSTRUCTIONS": os.environ.get("MKL_ENABLE_INSTRUCTIONS")},
                      "mode": "interleaved", "rows": rows}, args.out)
    else:
        fresh_processes(args.tokens, args.vocabs, args.repeats, args.out, args.shape)


# ---------------------------------------------------------------- pytest-benchmark mode

@pytest.fixture(scope="module", params=[49152, 128256], ids=lambda v: f"vocab{v}")
def inputs(request):
    return make_inputs(256, request.param)


@pytest.mark.benchmark(group="lens_stats")
@pytest.mark.parametrize("variant", ["fused_cpu", "fused_cpu_bf16", "naive_torch", "bare_gemm"])
def test_lens_stats(benchmark, inputs, variant):
    benchmark.pedantic(variants(*inputs, names=(variant,))[variant], rounds=2)


if __name__ == "__main__":
    main()
