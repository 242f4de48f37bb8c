"""The Triton kernels' GPU configurations compile for sm_90 (H100 / H200) without a GPU: every entry of
the autotuning search spaces (kernels/lens_stats.py, lens_kl.py, ridge_gram.py: TUNE_SPACE) and the
gather-dot, with triton's own ptxas (tests/gpu_compile.py). Each must also fit its registers with at
most MAX_STACK bytes of stack (cuobjdump's resource usage): a spilling configuration would be a
slow one in the search space. (lens_stats' and logit_extremes' defaults have their own compile
tests beside their kernel tests.)"""
import pathlib

import pytest

from gpu_compile import compile_offline

MAX_STACK = 64

_COMPILE = r'''
import pathlib, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedlens.kernels import gather_dot, lens_kl, lens_stats, ridge_gram

which, max_stack = sys.argv[1], int(sys.argv[2])
cuobjdump = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def build(fn, sig, const, warps, label):
    sig = dict(sig, **{c: "constexpr" for c in const})
    k = triton.compile(ASTSource(fn, sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    stack = max(int(s) for s in re.findall(r"STACK:(\d+)", usage))
    print(label, " ".join(re.findall(r"(?:REG|STACK):\d+", usage)))
    assert stack <= max_stack, f"{label}: {stack} bytes of stack (spills)"


if which == "lens_stats":  # phase 2 at the SmolLM2 timing layout (32 slots): bf16 weights with one-dot rows;
    # fp32 weights (tf32x3) for the entries that the fp32 compile test beside the kernel's tests does not cover
    sig = {"x_ptr": "*fp32", "w_ptr": "*bf16", "b_ptr": "*bf16", "tgt_ptr": "*i64", "ft_ptr": "*i64",
           "lf_ptr": "*fp32", "sid_ptr": "*i32", "lse_out": "*fp32", "ent_out": "*fp32", "tk_id_out": "*i64",
           "tk_val_out": "*fp32", "tlogit_out": "*fp32", "trank_out": "*i64", "kl_out": "*fp32",
           "frank_out": "*i64", "set_out": "*fp32", "S": "i32", "T": "i32", "V": "i32", "d": "i32",
           "stride_xs": "i32", "stride_xt": "i32", "stride_w": "i32", "softcap": "fp32"}
    for i, (rows, bv, bd, warps) in enumerate(lens_stats.TUNE_SPACE):
        for w in ("*bf16", "*fp32") if i else ("*bf16",):
            const = dict(K=10, KP=16, BLOCK_T=lens_stats._block_t(rows, bv, 32, 8192), SITES_P=32, N_SETS=0,
                         HAS_BIAS=False, HAS_SOFTCAP=False, W_BF16=w == "*bf16", BF16_DOT=w == "*bf16", PREC="tf32x3",
                         X_BF16=w == "*bf16", BLOCK_V=bv, BLOCK_D=bd)
            build(lens_stats._lens_kernel, dict(sig, w_ptr=w, b_ptr=w), const, warps,
                  f"lens_stats {w} {rows}x{bv}x{bd}/{warps}")
elif which == "lens_kl":  # fp32 weights (tf32x3 dots) in every entry; bf16 with a soft cap in the first
    sig = {"x_ptr": "*fp32", "w_ptr": "*fp32", "b_ptr": "*fp32", "kl_out": "*fp32", "lse_out": "*fp32",
           "lsef_out": "*fp32", "acc_ptr": "*fp32", "accb_ptr": "*fp32", "grad_out": "*fp32", "L": "i32", "T": "i32",
           "V": "i32", "d": "i32", "stride_xs": "i32", "stride_xt": "i32", "stride_w": "i32", "softcap": "fp32"}
    for i, (rows, bv, bd, warps) in enumerate(lens_kl.TUNE_SPACE):
        for w in ("*fp32", "*bf16") if i == 0 else ("*fp32",):
            const = dict(WITH_GRAD=True, BLOCK_T=rows // 32, SITES_P=32, HAS_BIAS=False, HAS_SOFTCAP=w == "*bf16",
                         W_BF16=w == "*bf16", BF16_DOT=w == "*bf16", PREC="tf32x3", X_BF16=w == "*bf16",
                         BLOCK_V=bv, BLOCK_D=bd)
            build(lens_kl._lens_kl_kernel, dict(sig, w_ptr=w, b_ptr=w), const, warps, f"lens_kl {w} {rows}x{bv}x{bd}/{warps}")
elif which == "ridge_gram":
    sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "sx_ptr": "*fp32", "sy_ptr": "*fp32", "out_ptr": "*fp64", "N": "i32",
           "d": "i32", "m": "i32", "stride_xs": "i32", "stride_xn": "i32", "stride_yn": "i32"}
    for block, block_n, warps in ridge_gram.TUNE_SPACE:
        build(ridge_gram._ridge_gram_kernel, sig, dict(BLOCK=block, BLOCK_N=block_n), warps,
              f"ridge_gram {block}x{block_n}/{warps}")
else:
    sig = {"x_ptr": "*fp32", "w_ptr": "*bf16", "b_ptr": "*bf16", "ids_ptr": "*i64", "out_ptr": "*fp32", "d": "i32",
           "stride_x": "i32", "stride_w": "i32"}
    build(gather_dot._gather_dot_kernel, sig, dict(HAS_BIAS=True, BLOCK_D=1024), 4, "gather_dot")
print("compiled")
'''


@pytest.mark.parametrize("kernel", ["lens_stats", "lens_kl", "ridge_gram", "gather_dot"])
def test_gpu_configurations_compile_for_sm90(kernel, tmp_path):
    compile_offline(_COMPILE, [kernel, str(MAX_STACK)], tmp_path)


@pytest.mark.parametrize("sites_p", [1, 2, 32, 64])
@pytest.mark.parametrize("t_cap", [1, 16, 256])
def test_lens_stats_autotuner_configs_fit_the_layout(sites_p, t_cap):
    """Every phase-2 configuration of a slot layout holds its gather tile (2·BLOCK_T ≤ BLOCK_V), gives tl.dot
    at least 16 rows and no more tokens than asked for; the autotuner's key names kernel arguments."""
    from fusedlens.kernels import lens_kl, lens_stats, ridge_gram

    tuner = lens_stats._tuned_lens_kernel(sites_p, t_cap)
    assert 2 <= len(tuner.configs) <= len(lens_stats.TUNE_SPACE)
    for c in tuner.configs:
        bt, bv = c.kwargs["BLOCK_T"], c.kwargs["BLOCK_V"]
        assert 2 * bt <= bv and bt * sites_p >= 16 and (bt <= t_cap or bt * sites_p == 16), c.kwargs
    assert len(lens_kl._tuned_kernel().configs) == len(lens_kl.TUNE_SPACE)
    assert len(ridge_gram._tuned_kernel().configs) == len(ridge_gram.TUNE_SPACE)
