"""kernels/lens_stats.py (the Triton fused lens) against the float64 reference, on raw tensors.

Runs on CPU under TRITON_INTERPRET=1 (set here before triton is imported; on a CUDA
machine the same tests run the compiled kernels on the GPU), so sizes stay small. The kernel file is imported straight from the source tree, not from the
installed package. Fresh random inputs each run: every test draws a new seed with
torch.seed() and reports it on failure.

Tolerances (fp32 and bf16 weights alike: xn stays fp32 and bf16 weights are compared
with float64 logits of the bf16-rounded weights):
  * lse, entropy, KL: |got - ref| <= max(1e-4, 1e-5 |ref|) + dz * cond, where
    dz = 1e-6 (1 + max |z|) bounds the rounding of an fp32 logit and cond = sum_v
    |d stat / d z_v| is the statistic's condition number for the row. The second term
    is negligible at ordinary scales; with logits in the hundreds (x scaled by 30) it is
    what any fp32 GEMM costs: KL ~ 500 with a final distribution split between two
    tokens moves by ~1e-2 when a logit moves by its fp32 rounding, and float64 stats
    computed from torch's own fp32 logits are off by as much;
  * logits (top-k values, target logit): |got - ref| <= 1e-5 (1 + max_v |z_v|) per row;
  * ids and ranks exact, except where the float64 logits have a near-tie, a gap in
    (0, 1e-5 (1 + max_v |z_v|)): such rows are masked out and must be rare. Exact ties
    (duplicated unembedding rows) are not masked: the tie rule must hold there.
"""
import importlib.util
import os
import pathlib

import pytest
import torch

from gpu_compile import compile_offline

if not torch.cuda.is_available():  # before triton is first imported (as tests/conftest.py does)
    os.environ["TRITON_INTERPRET"] = "1"

from fusedlens.ops.reference import stats_from_logits  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "triton_lens_stats", pathlib.Path(__file__).resolve().parents[1] / "kernels" / "lens_stats.py")
tls = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tls)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("lse", "entropy", "topk_ids", "topk_logits", "target_logit", "target_rank", "kl_to_final", "final_top1_rank")
ATOL, RTOL = 1e-4, 1e-5  # lse / entropy / KL
ZREL = 1e-5  # logits, and the near-tie gap, relative to 1 + max |z| of the row
DZ = 1e-6  # fp32 logit rounding (~ sqrt(d) 2^-24 |x| |w|), relative to 1 + max |z| of the row
MAX_MASKED = 0.25  # near-tie rows may be masked, but only a few


def softcap_(z, c):
    return c * torch.tanh(z / c) if c else z


def oracle_logits(xn, w, bias, softcap):
    # float64 GEMM over the distinct rows of w only: BLAS may round a column differently
    # by its position, and duplicated rows must give exactly tied float64 logits
    uniq, inv = torch.unique(w.double(), dim=0, return_inverse=True)
    z = (xn.double() @ uniq.T)[..., inv]
    if bias is not None:
        z = z + bias.double()
    return softcap_(z, softcap)


def conditions(z):
    """Per row, sum_v |d stat / d z_v| of lse, entropy and KL(p_final || q_row) (float64)."""
    logq = torch.log_softmax(z, -1)
    q = logq.exp()
    logp, p = logq[-1:], q[-1:]
    ent = -(q * logq).sum(-1, keepdim=True)
    kl = (p * (logp - logq)).sum(-1, keepdim=True)
    return {"lse": torch.ones_like(z[..., 0]),
            "entropy": (q * (logq + ent).abs()).sum(-1),
            "kl_to_final": (q - p).abs().sum(-1) + (p * (logp - logq - kl).abs()).sum(-1)}


def run_and_check(xn, w, bias, softcap, targets, k, **knobs):
    seed = getattr(run_and_check, "seed", None)
    xn, w = xn.to(DEVICE), w.to(DEVICE)
    bias = None if bias is None else bias.to(DEVICE)
    targets = None if targets is None else targets.to(DEVICE)
    out = tls.lens_stats(xn, w, bias, softcap, targets, k, **knobs)
    out = dict(zip(NAMES, (o.cpu() for o in out)))
    xn, w, bias = xn.cpu(), w.cpu(), None if bias is None else bias.cpu()
    S, T, _ = xn.shape
    V = w.shape[0]
    z = oracle_logits(xn, w, bias, softcap)
    tg = torch.full((T,), -1, dtype=torch.int64) if targets is None else targets.cpu()
    ref = stats_from_logits(z, tg.masked_fill(tg < 0, -100), k)
    ctx = f"seed={seed} S={S} T={T} V={V} k={k} softcap={softcap} knobs={knobs}"

    # shapes and dtypes
    for name, shape, dtype in (("lse", (S, T), torch.float32), ("entropy", (S, T), torch.float32),
                               ("topk_ids", (S, T, k), torch.int64), ("topk_logits", (S, T, k), torch.float32),
                               ("target_logit", (S, T), torch.float32), ("target_rank", (S, T), torch.int64),
                               ("kl_to_final", (S, T), torch.float32), ("final_top1_rank", (S, T), torch.int64)):
        assert out[name].shape == shape and out[name].dtype == dtype, (name, out[name].shape, out[name].dtype, ctx)

    # smooth statistics: the design tolerance, plus the unavoidable effect of fp32 logit
    # rounding (any fp32 GEMM has it), DZ (1 + max|z|) times the statistic's condition
    # number sum_v |d stat / d z_v| over the row and the final row.
    cond = conditions(z)
    dz = DZ * (1 + torch.maximum(z.abs().amax(-1), z[-1:].abs().amax(-1)))
    for name in ("lse", "entropy", "kl_to_final"):
        got, want = out[name].double(), getattr(ref, name)
        err = (got - want).abs()
        bad = err > torch.clamp(RTOL * want.abs(), min=ATOL) + dz * cond[name]
        assert not bad.any(), (name, float(err.max()), float((err / (ATOL + dz * cond[name])).max()), ctx)
    assert torch.all(out["kl_to_final"][-1] == 0), ("KL of the final site to itself", ctx)

    zscale = 1 + z.abs().amax(-1)  # [S, T]
    tie = ZREL * zscale

    # logits
    err = (out["topk_logits"].double() - ref.topk_logits).abs()
    assert torch.all(err <= ZREL * zscale[..., None]), ("topk_logits", float(err.max()), ctx)
    has = (tg >= 0).expand(S, T)
    assert torch.equal(torch.isnan(out["target_logit"]), ~has), ("target_logit NaN pattern", ctx)
    assert torch.equal(out["target_rank"] == -1, ~has), ("target_rank -1 pattern", ctx)
    if has.any():
        err = (out["target_logit"].double() - ref.target_logit)[has].abs()
        assert torch.all(err <= ZREL * zscale[has]), ("target_logit", float(err.max()), ctx)

    def near(gap):  # a gap in (0, tie): the fp32 order there is not determined by the float64 one
        return (gap > 0) & (gap < tie[..., None])

    # top-k ids: exact unless, among the float64 values down to (k-th value - tie), two
    # neighbours are nearly but not exactly equal (exact ties must follow the tie rule)
    srt = torch.sort(z, dim=-1, descending=True).values
    region = srt[..., :-1] >= (srt[..., k - 1] - tie)[..., None]
    amb_topk = (near(srt[..., :-1] - srt[..., 1:]) & region).any(-1)
    ok = ~amb_topk
    assert torch.equal(out["topk_ids"][ok], ref.topk_ids[ok]), ("topk_ids", ctx)

    # target rank: exact unless some other logit is within the near-tie band of the target's
    masked = [amb_topk]
    if has.any():
        zt = z.gather(-1, tg.clamp_min(0).expand(S, T)[..., None])
        amb_t = near((z - zt).abs()).any(-1) & has
        ok = has & ~amb_t
        assert torch.equal(out["target_rank"][ok], ref.target_rank[ok]), ("target_rank", ctx)
        masked.append(amb_t[has])

    # rank of the final top-1: also ambiguous when the final top-1 itself is
    ft = ref.topk_ids[-1, :, 0]
    zft = z.gather(-1, ft.expand(S, T)[..., None])
    amb_f = near((z - zft).abs()).any(-1) | amb_topk[-1:].expand(S, T)
    ok = ~amb_f
    assert torch.equal(out["final_top1_rank"][ok], ref.final_top1_rank[ok]), ("final_top1_rank", ctx)
    masked.append(amb_f)
    assert torch.all(out["final_top1_rank"][-1][~amb_f[-1]] == 0), ("final site ranks its own top-1 first", ctx)

    frac = torch.cat([m.reshape(-1).float() for m in masked]).mean().item()
    assert frac <= MAX_MASKED, (f"too many near-tie rows masked: {frac:.2f}", ctx)

    # one sweep, one value: where the target is among the top-k, both report the same fp32 logit
    hit = (out["topk_ids"] == tg.expand(S, T)[..., None]) & has[..., None]
    same = out["topk_logits"] == out["target_logit"][..., None].expand(S, T, k)
    assert torch.all(same[hit]), ("target_logit differs from the top-k logit of the same id", ctx)
    return out, ref, z, frac


@pytest.fixture(autouse=True)
def fresh_seed():
    run_and_check.seed = torch.seed()  # a new random seed per test, reported in failures
    yield


def make(S, T, d, V, *, scale=1.0, wdtype=torch.float32, with_bias=True, none_frac=0.3):
    xn = torch.randn(S, T, d) * scale
    w = torch.randn(V, d).to(wdtype)
    bias = torch.randn(V).to(wdtype) if with_bias else None
    targets = torch.randint(0, V, (T,))
    targets[torch.rand(T) < none_frac] = -1
    return xn, w, bias, targets


# ---------------------------------------------------------------- basic shapes and knobs

@pytest.mark.parametrize("S,T,d,V,k,knobs", [
    (3, 7, 48, 1007, 5, {}),                                   # odd vocab, d below one BLOCK_D
    (4, 9, 80, 1000 + 7, 3, {"block_v": 32, "block_d": 32, "final_splits": 3}),  # many tiles, d tail, split phase 1
    (4, 5, 64, 1031, 4, {"max_sites_per_program": 2}),         # sites split into groups, final row recomputed
    (3, 6, 32, 517, 2, {"rows_per_program": 16}),              # several token blocks per launch
])
def test_matches_float64(S, T, d, V, k, knobs):
    xn, w, bias, targets = make(S, T, d, V)
    run_and_check(xn, w, bias, 0.0, targets, k, **knobs)


def test_single_token():
    xn, w, bias, _ = make(4, 1, 64, 1007)
    run_and_check(xn, w, bias, 0.0, torch.tensor([123]), 3)


def test_single_site():
    xn, w, bias, targets = make(1, 9, 64, 1007)
    out, _, _, _ = run_and_check(xn, w, bias, 0.0, targets, 4)
    assert torch.all(out["kl_to_final"] == 0)
    assert torch.all(out["final_top1_rank"] == 0)


def test_single_site_single_token():
    xn, w, bias, _ = make(1, 1, 16, 100)
    out, _, _, _ = run_and_check(xn, w, bias, 0.0, torch.tensor([7]), 1)
    assert out["kl_to_final"].item() == 0 and out["final_top1_rank"].item() == 0


@pytest.mark.parametrize("k", [1, 32])
def test_k_extremes(k):
    xn, w, bias, targets = make(3, 6, 64, 1007)
    run_and_check(xn, w, bias, 0.0, targets, k)


def test_k_equal_vocab():
    xn, w, bias, targets = make(2, 3, 32, 32)
    out, ref, _, _ = run_and_check(xn, w, bias, 0.0, targets, 32)
    assert torch.equal(out["topk_ids"].sort(-1).values, torch.arange(32).expand(2, 3, 32))


def test_large_magnitude_logits():
    xn, w, bias, targets = make(4, 7, 64, 1007, scale=30.0)
    run_and_check(xn, w, bias, 0.0, targets, 5)


def test_no_bias_and_no_targets():
    xn, w, _, _ = make(3, 5, 64, 1007, with_bias=False)
    out, _, _, _ = run_and_check(xn, w, None, 0.0, None, 3)
    assert torch.isnan(out["target_logit"]).all() and torch.all(out["target_rank"] == -1)


def test_targets_none_marker_values():
    """-1 is the documented 'no target'; any negative id (e.g. IGNORE_INDEX -100) means the same."""
    xn, w, bias, _ = make(2, 6, 32, 300)
    targets = torch.tensor([-1, 5, -100, 299, 0, -1])
    out, _, _, _ = run_and_check(xn, w, bias, 0.0, targets, 2)
    assert torch.equal(out["target_rank"][:, [0, 2, 5]], torch.full((2, 3), -1))


# ---------------------------------------------------------------- dtypes and softcap

@pytest.mark.parametrize("with_bias", [False, True])
def test_bf16_weights(with_bias):
    # reference: float64 logits of the bf16-rounded weights (xn stays fp32 in the kernel)
    xn, w, bias, targets = make(3, 7, 80, 1007, wdtype=torch.bfloat16, with_bias=with_bias)
    run_and_check(xn, w, bias, 0.0, targets, 4, block_d=32)


def test_bf16_weights_large_magnitude():
    xn, w, bias, targets = make(3, 5, 64, 1007, scale=30.0, wdtype=torch.bfloat16)
    run_and_check(xn, w, bias, 0.0, targets, 3)


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_softcap(wdtype):
    # raw logits up to ~ 3 sqrt(d + 1) = 24 against a cap of 10: the cap bends them a lot
    # (without saturating so far that fp32 rounds distinct float64 logits to one value)
    xn, w, bias, targets = make(3, 7, 64, 1007, wdtype=wdtype)
    out, _, z, _ = run_and_check(xn, w, bias, 10.0, targets, 4)
    assert z.abs().max() < 10 and z.abs().max() > 9  # the cap is active


def test_softcap_small_arguments():
    # |z / c| < 0.2 everywhere: the odd Taylor branch of the kernel's tanh
    xn, w, bias, targets = make(2, 5, 32, 700, scale=0.1, with_bias=False)
    run_and_check(xn, w, None, 30.0, targets, 3)


# ---------------------------------------------------------------- exact ties

def dyadic(shape, den, lo, hi):
    """Random multiples of 1/den in [lo/den, hi/den]: with den a power of two and small
    numerators, every product and partial sum of a logit is exact in fp32 (and bf16 holds
    the weights exactly), so duplicated rows tie exactly whatever order a GEMM sums in."""
    return torch.randint(lo, hi + 1, shape).float() / den


def tied_problem(S, T, d, V, *, n_hot=12, wdtype=torch.float32, seed_bias=True):
    """Hot rows of w with exact duplicates elsewhere; xn points at hot rows, so the
    top-k, the final top-1 and the targets land on exactly tied logits. All values are
    dyadic: |w| <= 1 in steps of 1/16, |xn| < 2^6 in steps of 1/16, so each product is a
    multiple of 2^-8 below 2^6 and any sum of d <= 2^7 of them stays below 2^13, well
    inside fp32's 24-bit significand: every logit is exact on any CPU or GPU."""
    assert d <= 128
    w = dyadic((V, d), 16, -16, 16)
    perm = torch.randperm(V)
    hot, dup = perm[:n_hot], perm[n_hot:2 * n_hot]
    w[dup] = w[hot]
    dup2 = perm[2 * n_hot:2 * n_hot + n_hot // 2]  # a third copy of some
    w[dup2] = w[hot[:n_hot // 2]]
    w = w.to(wdtype)
    bias = dyadic((V,), 16, -32, 32).to(wdtype) if seed_bias else None
    if bias is not None:
        bias[dup] = bias[hot]
        bias[dup2] = bias[hot[:n_hot // 2]]
    mix = torch.randn(S, T, n_hot).abs() ** 3  # each row leans on a few hot rows
    xn = (mix @ w[hot].float()) / (d ** 0.5) + 0.05 * torch.randn(S, T, d)
    xn = (xn * 16).round().clamp(-1023, 1023) / 16
    targets = torch.cat([hot, dup, dup2])[torch.randint(0, 2 * n_hot + n_hot // 2, (T,))]
    targets[0] = -1
    return xn, w, bias, targets, hot, dup


@pytest.mark.parametrize("k", [1, 6, 32])
def test_exact_ties_follow_tie_rule(k):
    xn, w, bias, targets, hot, dup = tied_problem(3, 8, 64, 1007)
    out, ref, z, _ = run_and_check(xn, w, bias, 0.0, targets, k)
    # the problem really is tie-heavy: the final top-1 has an exact duplicate for most tokens
    zf = z[-1]
    top = zf.max(-1, keepdim=True).values
    n_tied = (zf == top).sum(-1)
    assert (n_tied >= 2).float().mean() > 0.5, n_tied
    # and the tie rule picked the lowest id among the exactly tied maxima
    lowest = torch.where(zf == top, torch.arange(zf.shape[-1]), zf.shape[-1]).min(-1).values
    assert torch.equal(out["topk_ids"][-1, :, 0], lowest)
    assert torch.all(out["final_top1_rank"][-1] == 0)
    if k > 1:  # tied values inside the top-k come out by ascending id
        vals, ids = out["topk_logits"], out["topk_ids"]
        same = vals[..., 1:] == vals[..., :-1]
        assert same.any()
        assert torch.all(ids[..., 1:][same] > ids[..., :-1][same])


def test_exact_ties_bf16_and_tiles():
    xn, w, bias, targets, _, _ = tied_problem(4, 6, 48, 1007, wdtype=torch.bfloat16)
    run_and_check(xn, w, bias, 0.0, targets, 8, block_v=32, max_sites_per_program=2)


def test_exact_ties_softcap():
    xn, w, bias, targets, _, _ = tied_problem(3, 6, 64, 700)
    run_and_check(xn, w, bias, 50.0, targets, 4)


def test_zero_logits_tie_at_the_top():
    # all logits negative except ten zero rows of w (five of them -0.0): the top-10 are exact ties at 0
    xn = torch.randn(2, 4, 32).abs()
    w = -torch.randn(200, 32).abs()
    w[50:55] = -0.0
    w[55:60] = 0.0
    targets = torch.tensor([52, 57, -1, 3])
    out, _, _, _ = run_and_check(xn, w, None, 0.0, targets, 16)
    assert torch.equal(out["topk_ids"][..., :10], torch.arange(50, 60).expand(2, 4, 10))
    assert torch.equal(out["target_rank"][:, :2], torch.zeros(2, 2, dtype=torch.int64))


# ---------------------------------------------------------------- input checks

@pytest.mark.parametrize("mutate,match", [
    (lambda x, w, t, k: (x[..., :-1], w, t, k), r"\[S, T, d\]"),
    (lambda x, w, t, k: (x, w, t, 0), "k:"),
    (lambda x, w, t, k: (x, w, t, 33), "k:"),
    (lambda x, w, t, k: (x, w, t + 60, k), "targets"),
    (lambda x, w, t, k: (x, w, t[:2], k), "targets"),
    (lambda x, w, t, k: (x, w.double(), t, k), "float32 or bfloat16"),
    (lambda x, w, t, k: (x[:, :0], w, t[:0], k), "empty"),
])
def test_bad_input(mutate, match):
    x, w, t, k = mutate(torch.randn(2, 3, 16), torch.randn(60, 16), torch.randint(0, 60, (3,)), 2)
    with pytest.raises(ValueError, match=match):
        tls.lens_stats(x, w, None, 0.0, t, k)


# ---------------------------------------------------------------- the GPU path compiles (no GPU needed)

_COMPILE = r'''
import importlib.util, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = importlib.util.spec_from_file_location("tls", sys.argv[1]); m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
w = "*bf16" if sys.argv[2] == "bf16" else "*fp32"
common = dict(HAS_BIAS=True, HAS_SOFTCAP=True, W_BF16=w == "*bf16", BF16_DOT=w == "*bf16", PREC="tf32x3",
              BLOCK_V=64, BLOCK_D=32, X_BF16=False)  # the three-part bf16 dot (fp32-accurate x)
def build(fn, sig, const, warps):
    sig = dict(sig, **{c: "constexpr" for c in const})
    return triton.compile(ASTSource(fn, sig, constexprs=const), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps})
build(m._final_kernel, {"x_ptr": "*fp32", "w_ptr": w, "b_ptr": w, "m_out": "*fp32", "s_out": "*fp32",
      "key_out": "*i64", "T": "i32", "V": "i32", "d": "i32", "stride_xt": "i32", "stride_w": "i32",
      "x_final_off": "i32", "softcap": "fp32", "tiles_per_split": "i32"}, dict(common, ROWS=64), 4)
k = int(sys.argv[3])
build(m._lens_kernel, {"x_ptr": "*fp32", "w_ptr": w, "b_ptr": w, "tgt_ptr": "*i64", "ft_ptr": "*i64",
      "lf_ptr": "*fp32", "sid_ptr": "*i32", "lse_out": "*fp32", "ent_out": "*fp32", "tk_id_out": "*i64",
      "tk_val_out": "*fp32", "tlogit_out": "*fp32", "trank_out": "*i64", "kl_out": "*fp32", "frank_out": "*i64",
      "set_out": "*fp32", "S": "i32", "T": "i32", "V": "i32", "d": "i32", "stride_xs": "i32", "stride_xt": "i32",
      "stride_w": "i32", "softcap": "fp32"},
      dict(common, K=k, KP=triton.next_power_of_2(k), BLOCK_T=4, SITES_P=32,
           N_SETS=4 if w == "*fp32" else 0), 8)  # token-set mass compiled in one case, left out in the other
print("compiled")
'''


@pytest.mark.parametrize("wdtype,k", [("fp32", 5), ("bf16", 32)])
def test_gpu_path_compiles_for_sm90(wdtype, k, tmp_path):
    """Compile both kernels (GPU defaults) to an sm_90 cubin with triton's own ptxas: no GPU needed."""
    kernel = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "lens_stats.py"
    compile_offline(_COMPILE, [str(kernel), wdtype, str(k)], tmp_path)


def test_bf16_rounded_rows_take_one_dot_with_the_same_result():
    """x_bf16 (compute="bf16": xn already rounded to bf16): one bf16 dot per tile instead of the three
    parts of an fp32 xn, whose second and third parts are then zero: the same statistics, bit for bit."""
    xn, w, bias, targets = make(3, 5, 80, 1007, wdtype=torch.bfloat16)
    xn = xn.bfloat16().float()
    one = tls.lens_stats(xn.to(DEVICE), w.to(DEVICE), bias.to(DEVICE), 0.0, targets.to(DEVICE), 4, x_bf16=True)
    three = tls.lens_stats(xn.to(DEVICE), w.to(DEVICE), bias.to(DEVICE), 0.0, targets.to(DEVICE), 4)
    for name, a, b in zip(NAMES, one, three):  # bit for bit; NaN (a row with no target) equals NaN
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=name)
    run_and_check(xn, w, bias, 0.0, targets, 4, x_bf16=True)
