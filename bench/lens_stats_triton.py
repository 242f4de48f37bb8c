"""Fused Triton lens statistics vs naive PyTorch vs the bare GEMM, on a CUDA GPU.

    python bench/lens_stats_triton.py            # writes bench/results/lens_stats_triton.json
    pytest bench/lens_stats_triton.py --benchmark-json=bench/results/lens_stats_triton_pytest.json

Shapes: S = 31 sites (SmolLM2-135M: embeddings + 30 layers), T = 2048 tokens,
d = 576, V = 49152 (SmolLM2) and 128256 (Llama-3 vocabulary), k = 10.

Variants (same inputs: xn [S, T, d] fp32, w [V, d], bias None, targets [T]):
  triton       kernels/lens_stats.py: every statistic, no [rows x V] logits in memory
  naive_torch  per site: materialise [T, V] fp32 logits, log_softmax, entropy, topk, gather the
               target, ranks by comparison, KL against the final site's log-probs (kept)
  matmul       the bare GEMM of the same shapes (per site into one reused [T, V] buffer):
               the work floor. `matmul` is torch's default fp32 (full precision);
               `matmul_tf32` allows TF32 (one tensor-core pass; the triton kernel runs
               three, "tf32x3", to keep fp32 accuracy). For bf16 weights the floor is a
               bf16 x bf16 GEMM (`matmul`; the kernel runs three bf16 passes).
Timing and peak memory: common.Clock (CUDA events, the median of 5 calls after a warm-up;
torch.cuda.max_memory_allocated over the calls, minus what the inputs already held). The
GPU check (bench/gpu_check.py) times the same variants through fusedlens.ops.

Without CUDA the module imports fine and every test is skipped.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
import torch

from common import Clock, result_path, write_result

S, T, D, K = 31, 2048, 576, 10
VOCABS = (49152, 128256)
WDTYPES = ("float32", "bfloat16")
HERE = pathlib.Path(__file__).resolve().parent
HAS_CUDA = torch.cuda.is_available()


def _load_kernel():
    """The kernel straight from the source tree (kernels/lens_stats.py), or None."""
    try:
        spec = importlib.util.spec_from_file_location("triton_lens_stats", HERE.parent / "kernels" / "lens_stats.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.lens_stats
    except Exception:  # no triton here: the benchmarks are skipped anyway
        return None


lens_stats = _load_kernel() if HAS_CUDA else None
pytestmark = pytest.mark.skipif(not HAS_CUDA or lens_stats is None, reason="needs CUDA and triton")


def make_inputs(vocab: int, wdtype: str, device="cuda"):
    g = torch.Generator(device="cpu").manual_seed(0)
    xn = torch.randn(S, T, D, generator=g).to(device)
    w = (torch.randn(vocab, D, generator=g) / D ** 0.5 * 4).to(device=device, dtype=getattr(torch, wdtype))
    targets = torch.randint(0, vocab, (T,), generator=g).to(device)
    return xn, w, targets


def naive_torch(xn, w, targets, k=K, gemm_dtype=None):
    """What one writes without fusion: logits per site, then ~10 passes over them. gemm_dtype
    (e.g. bf16 for bf16 weights): the logits' GEMM in that dtype, widened to fp32 after; None: fp32."""
    wf = w.float() if gemm_dtype is None else w.to(gemm_dtype)

    def logits(x):
        return x @ wf.T if gemm_dtype is None else (x.to(gemm_dtype) @ wf.T).float()

    sites = xn.shape[0]
    logits_f = logits(xn[-1])
    logp_f = torch.log_softmax(logits_f, -1)
    p_f = logp_f.exp()
    del logits_f
    top1_f = logp_f.argmax(-1)
    out = {n: [] for n in ("lse", "entropy", "topk_ids", "topk_logits", "target_logit", "target_rank", "kl",
                           "final_top1_rank")}
    for s in range(sites):
        z = logits(xn[s])
        lse = torch.logsumexp(z, -1)
        logp = z - lse[:, None]
        out["lse"].append(lse)
        out["entropy"].append(-(logp.exp() * logp).sum(-1))
        vals, ids = torch.topk(z, k, dim=-1)
        out["topk_ids"].append(ids)
        out["topk_logits"].append(vals)
        zt = z.gather(-1, targets[:, None])
        out["target_logit"].append(zt[:, 0])
        out["target_rank"].append((z > zt).sum(-1))
        out["kl"].append((p_f * (logp_f - logp)).sum(-1))
        zft = z.gather(-1, top1_f[:, None])
        out["final_top1_rank"].append((z > zft).sum(-1))
        del z, logp
    return {n: torch.stack(v) for n, v in out.items()}


def bare_matmul(xn, w, tf32: bool = False):
    """The GEMM floor: S x [T, d] @ [d, V] into one reused buffer."""
    if w.dtype == torch.bfloat16:
        x = xn.to(torch.bfloat16)
        buf = torch.empty(xn.shape[1], w.shape[0], dtype=torch.bfloat16, device=xn.device)
    else:
        x = xn
        buf = torch.empty(xn.shape[1], w.shape[0], dtype=torch.float32, device=xn.device)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for s in range(xn.shape[0]):
            torch.matmul(x[s], w.T, out=buf)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return buf


def variant_fn(name, xn, w, targets):
    if name == "triton":
        return lambda: lens_stats(xn, w, None, 0.0, targets, K)
    if name == "naive_torch":
        return lambda: naive_torch(xn, w, targets)
    if name == "matmul":
        return lambda: bare_matmul(xn, w)
    if name == "matmul_tf32":
        return lambda: bare_matmul(xn, w, tf32=True)
    raise ValueError(name)


VARIANTS = ("triton", "naive_torch", "matmul", "matmul_tf32")


@pytest.fixture(scope="module", params=[(v, dt) for v in VOCABS for dt in WDTYPES], ids=lambda p: f"V{p[0]}-{p[1]}")
def inputs(request):
    vocab, wdtype = request.param
    return make_inputs(vocab, wdtype)


@pytest.mark.benchmark(group="lens_triton")
@pytest.mark.parametrize("variant", VARIANTS)
def test_lens_triton(benchmark, inputs, variant):
    xn, w, targets = inputs
    if variant == "matmul_tf32" and w.dtype == torch.bfloat16:
        pytest.skip("TF32 applies to fp32 weights only")
    fn = variant_fn(variant, xn, w, targets)
    fn()  # compile / warm up
    torch.cuda.synchronize()

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)


# ------------------------------------------------------------------ script: JSON with ratios and memory

def agreement(xn, w, targets):
    """Max differences triton vs naive torch (both fp32 logits; ids compared at top-1)."""
    got = lens_stats(xn, w, None, 0.0, targets, K)
    ref = naive_torch(xn, w, targets)
    names = ("lse", "entropy", "topk_ids", "topk_logits", "target_logit", "target_rank", "kl", "final_top1_rank")
    g = dict(zip(names, got))
    return {
        "lse_max_abs": float((g["lse"] - ref["lse"]).abs().max()),
        "entropy_max_abs": float((g["entropy"] - ref["entropy"]).abs().max()),
        "kl_max_abs": float((g["kl"] - ref["kl"]).abs().max()),
        "target_logit_max_abs": float((g["target_logit"] - ref["target_logit"]).abs().max()),
        "top1_agree": float((g["topk_ids"][..., 0] == ref["topk_ids"][..., 0]).float().mean()),
        "target_rank_agree": float((g["target_rank"] == ref["target_rank"]).float().mean()),
    }


def main() -> int:
    if not HAS_CUDA or lens_stats is None:
        print("lens_stats_triton: needs CUDA and triton; nothing to do", file=sys.stderr)
        return 0
    clock = Clock(cuda=True)
    rows = []
    ratios = {}
    checks = {}
    for vocab in VOCABS:
        for wdtype in WDTYPES:
            xn, w, targets = make_inputs(vocab, wdtype)
            tag = f"V{vocab}-{wdtype}"
            checks[tag] = agreement(xn, w, targets)
            ms = {}
            for variant in VARIANTS:
                if variant == "matmul_tf32" and wdtype == "bfloat16":
                    continue
                r = clock.measure(variant_fn(variant, xn, w, targets))
                ms[variant] = r["ms"]
                gemm_flops = 2 * S * T * D * vocab
                rows.append({"vocab": vocab, "wdtype": wdtype, "variant": variant, **r,
                             "tflops_gemm_equiv": gemm_flops / ms[variant] / 1e9})
                print(f"{tag:>18} {variant:>12}: {ms[variant]:9.2f} ms  +{r['peak_extra_bytes'] / 2**30:.2f} GiB",
                      flush=True)
            ratios[tag] = {
                "naive_over_triton": ms["naive_torch"] / ms["triton"],
                "triton_over_matmul": ms["triton"] / ms["matmul"],
                **({"triton_over_matmul_tf32": ms["triton"] / ms["matmul_tf32"]} if "matmul_tf32" in ms else {}),
            }
            del xn, w, targets
            torch.cuda.empty_cache()
    result = {
        "device": torch.cuda.get_device_name(),
        "shapes": {"sites": S, "tokens": T, "d_model": D, "vocabs": list(VOCABS), "k": K},
        "results": rows,
        "ratios": ratios,
        "agreement_vs_naive_fp32": checks,
    }
    write_result(result, result_path("lens_stats_triton.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
