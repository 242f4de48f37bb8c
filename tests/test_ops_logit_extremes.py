"""ops.logit_extremes on every backend present against the float64 reference on fresh random inputs.

Tolerances as tests/test_ops_lens_stats.py, through its helpers: logits within 1e-4 absolute or
1e-5 relative of float64, or within the row's own float32 logit error (NEAR times it); ids exact
except where the float64 logits have a genuine near-tie (closer than float32 rounding can
resolve). Exact ties, built from integer-valued rows and weights (every product and partial sum
exact in float32, and bf16 holds them exactly), are never masked: the tie rule must hold there,
in the top-k and in the bottom-k. Each test draws a fresh seed (printed, so a failure shows it).
"""

import importlib.util

import pytest
import torch

from conftest import backends_here
from gpu_compile import compile_offline
from fusedlens import Unembed, ops
from fusedlens.core import backends
from fusedlens.ops import reference
from test_ops_lens_stats import float32_bound, float32_error, float64_logits, topk_clean

BACKENDS = [b for b in backends_here() if b != "triton" or importlib.util.find_spec("fusedlens.kernels.logit_extremes")]


@pytest.fixture(autouse=True)
def fresh_seed():
    print(f"seed {torch.seed()}")  # torch.randn draws from a new seed each test, shown on failure


def make(lead, d, vocab, *, scale=1.0, wdtype=torch.float32):
    rows = torch.randn(*lead, d) * scale + 0.1
    weight = (torch.randn(vocab, d) / d ** 0.5).to(wdtype)
    return rows, weight


def check(backend, rows, weight, k, compute="fp32", **tiles):
    """Run the op and compare both ends with the float64 reference; returns (got, float64 logits [R, V])."""
    if backend == "cpu" and not tiles:
        tiles = {"vocab_tile": 64}  # many tiles (rounded to whole register panels)
    got = ops.logit_extremes(rows, weight, k, backend=backend, compute=compute, **tiles)
    lead, d = rows.shape[:-1], rows.shape[-1]
    for name in ("top_ids", "top_logits", "bottom_ids", "bottom_logits"):
        t = getattr(got, name)
        assert t.shape == (*lead, k) and t.dtype == (torch.int64 if name.endswith("ids") else torch.float32), name
    flat = rows.reshape(-1, d)
    top_ids, top_logits, bottom_ids, bottom_logits = reference.logit_extremes(flat, weight, k, compute=compute)
    head = Unembed(weight)
    logits = float64_logits(flat, reference.no_norm, head, compute)
    scale = float32_error(flat, reference.no_norm, head, logits, compute)
    # the bottom-k is the top-k of -z: one comparison for both ends
    for end, sign, want_ids, want_logits in (("top", 1, top_ids, top_logits), ("bottom", -1, bottom_ids, bottom_logits)):
        ids = getattr(got, f"{end}_ids").reshape(-1, k)
        vals = getattr(got, f"{end}_logits").reshape(-1, k).double()
        err = (vals - want_logits).abs()
        assert bool((err <= float32_bound(err, want_logits, scale)).all()), f"{end}_logits: max error {float(err.max()):.3g}"
        # each reported logit is the logit of the id reported beside it
        err = (vals - logits.gather(-1, ids)).abs()
        assert bool((err <= float32_bound(err, want_logits, scale)).all()), f"{end}: logits do not match their ids"
        srt = ids.sort(-1).values
        assert bool((srt[:, 1:] != srt[:, :-1]).all()), f"{end}: an id twice"
        clean = topk_clean(sign * logits, sign * want_logits, scale)
        assert torch.equal(ids[clean], want_ids[clean]), f"{end}_ids"
        # the check checked something (a row or two may all be near-ties, rarely: ~0.2 % per row at k = 32).
        # With d = 1 every row's logits are x_r · w: rows of one sign share their order, so there are at
        # most two independent rows, and one near-tie in w masks them all.
        independent = clean.numel() if d > 1 else 2
        assert independent < 4 or clean.float().mean() > 0.5, f"{end}: too many near-tie rows masked"
    return got, logits


SHAPES = [  # leading shape, d, vocab
    ((9,), 64, 1009),     # vocab not a multiple of any tile
    ((1,), 7, 129),       # one row
    ((), 40, 97),         # one row without a leading shape
    ((3, 5), 577, 97),    # a leading shape; d above the f32 kernel's k-block
    ((4,), 1, 1009),      # d 1: z = r · w_v
    ((2, 3), 33, 300),
]


def shape_cases():
    for backend in BACKENDS:
        for shape in SHAPES:
            yield pytest.param(backend, shape, id=f"{backend}-{'x'.join(map(str, shape[0] + shape[1:]))}")


@pytest.mark.parametrize("backend,shape", list(shape_cases()))
@pytest.mark.parametrize("k", [1, 32])
def test_random_shapes(backend, shape, k):
    check(backend, *make(*shape), k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vocab", [20, 32])
def test_k_equal_vocab(backend, vocab):
    rows, weight = make((3, 2), 16, vocab)
    got, logits = check(backend, rows, weight, vocab)
    everything = torch.arange(vocab).expand(3, 2, vocab)
    assert torch.equal(got.top_ids.sort(-1).values, everything)
    assert torch.equal(got.bottom_ids.sort(-1).values, everything)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_magnitude_logits(backend):
    check(backend, *make((7,), 64, 611, scale=300.0), 8)


@pytest.mark.parametrize("vocab_tile", [1, 32, 100, 1009, 5000])
def test_cpu_tiles(vocab_tile):
    # tiles below one register panel, not a multiple of one, the whole vocabulary and more
    check("cpu", *make((13,), 48, 1009), 5, vocab_tile=vocab_tile)


def integer_problem(lead, d, vocab, *, wdtype=torch.float32, lo=-3, hi=3):
    """Integer-valued rows and weights (exact in bf16, every product and sum exact in float32 in
    any order) with duplicated unembedding rows and a few zero rows: many exactly tied logits,
    at the top and at the bottom."""
    rows = torch.randint(lo, hi + 1, (*lead, d)).float()
    weight = torch.randint(lo, hi + 1, (vocab, d)).float()
    perm = torch.randperm(vocab)
    weight[perm[8:16]] = weight[perm[:8]]  # duplicates, above and below the originals' ids
    weight[perm[16:20]] = 0.0
    return rows, weight.to(wdtype)


def assert_tie_rule(got, logits, k):
    """Exact: ids and logits against a stable sort of the float64 logits (exact here), both ends."""
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    assert torch.equal(got.top_ids.reshape(order.shape), order)
    order = torch.sort(logits, dim=-1, stable=True).indices[..., :k]
    assert torch.equal(got.bottom_ids.reshape(order.shape), order)
    for ids, vals in ((got.top_ids, got.top_logits), (got.bottom_ids, got.bottom_logits)):
        ids, vals = ids.reshape(-1, k), vals.reshape(-1, k)
        assert torch.equal(vals.double(), logits.gather(-1, ids))
        same = vals[:, 1:] == vals[:, :-1]
        assert torch.all(ids[:, 1:][same] > ids[:, :-1][same])  # equal logits: ascending ids


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wdtype,compute", [(torch.float32, "fp32"), (torch.bfloat16, "bf16"),
                                            (torch.bfloat16, "fp32"), (torch.float32, "bf16")],
                         ids=["w_fp32-fp32", "w_bf16-bf16", "w_bf16-fp32", "w_fp32-bf16"])
@pytest.mark.parametrize("k", [1, 10, 32])
def test_exact_ties_follow_the_rule(backend, wdtype, compute, k):
    rows, weight = integer_problem((2, 3), 64, 1009, wdtype=wdtype)
    got = ops.logit_extremes(rows, weight, k, backend=backend, compute=compute,
                             **({"vocab_tile": 100} if backend == "cpu" else {}))
    logits = rows.reshape(-1, 64).double() @ weight.double().T
    assert_tie_rule(got, logits, k)
    if k == 32:  # the problem really has ties inside both ends
        for vals in (got.top_logits, got.bottom_logits):
            assert bool((vals[..., 1:] == vals[..., :-1]).any())


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_everywhere(backend):
    # d 1 with values in {-1, 0, 1}: every logit is -r, 0 or r, so each end is one long run of
    # equal logits; k = 32 < the run, so the lowest ids of the run, in order
    rows, weight = integer_problem((5,), 1, 300, lo=-1, hi=1)
    rows[0] = 0.0  # logits all zero (of either sign): top and bottom are ids 0..31
    got = ops.logit_extremes(rows, weight, 32, backend=backend)
    logits = rows.double() @ weight.double().T
    assert_tie_rule(got, logits, 32)
    assert torch.equal(got.top_ids[0], torch.arange(32)) and torch.equal(got.bottom_ids[0], torch.arange(32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("compute", ["fp32", "bf16"])
def test_bfloat16_weights(backend, compute):
    check(backend, *make((3, 4), 64, 1031, wdtype=torch.bfloat16), 5, compute)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_compute_with_fp32_weights(backend):
    # "bf16" rounds fp32 weights too: the extremes of the rounded operands
    check(backend, *make((6,), 96, 701), 4, "bf16")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rdtype", [torch.bfloat16, torch.float16])
def test_half_precision_rows(backend, rdtype):
    rows, weight = make((5,), 64, 509)
    got, _ = check(backend, rows.to(rdtype), weight, 4)
    assert got.top_logits.dtype == torch.float32


@pytest.mark.parametrize("shape", [(13, 577, 1000), (40, 64, 2053), (1, 7, 33)], ids=lambda s: "x".join(map(str, s)))
def test_cpu_bf16_sweep_odd_shapes(shape):
    # the bf16 tile kernel's edges (as in test_ops_lens_stats): rows not a multiple of its row
    # block, vocab not a multiple of its 32-column panel or of the tile, odd d
    rows, d, vocab = shape
    check("cpu", *make((rows,), d, vocab, wdtype=torch.bfloat16), 3, "bf16", vocab_tile=96)


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16], ids=["w_fp32", "w_bf16"])
def test_bf16_compute_on_a_cpu_without_bf16_dot(monkeypatch, wdtype):
    # Without AVX512-BF16 the rounded operands go through the fp32 sweep: the same extremes.
    kernel, weights = backends._C.logit_extremes, []
    monkeypatch.setattr(backends, "bf16_dot_on_cpu", lambda: False)
    monkeypatch.setattr(backends._C, "logit_extremes", lambda *args: weights.append(args[1].dtype) or kernel(*args))
    check("cpu", *make((7,), 577, 1009, wdtype=wdtype), 3, "bf16")
    assert weights == [torch.float32]  # the fp32 sweep ran


def test_compute_auto_follows_the_weights():
    rows, weight = make((5,), 32, 211, wdtype=torch.bfloat16)
    auto = ops.logit_extremes(rows, weight, 2)
    assert torch.equal(auto.top_logits, ops.logit_extremes(rows, weight, 2, compute="bf16").top_logits)
    assert not torch.equal(auto.top_logits, ops.logit_extremes(rows, weight, 2, compute="fp32").top_logits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_k_is_10(backend):
    got = ops.logit_extremes(*make((4,), 32, 500), backend=backend)
    assert got.top_ids.shape == (4, 10) and got.bottom_logits.shape == (4, 10)


@pytest.mark.parametrize("mutate,match", [
    (lambda r, w, k: (r[..., :-1], w, k), "d_model"),
    (lambda r, w, k: (r.masked_fill(r > 1, float("nan")), w, k), "NaN"),
    (lambda r, w, k: (r.masked_fill(r > 1, float("inf")), w, k), "NaN/Inf"),
    (lambda r, w, k: (r, w, 0), "k: expected an int"),
    (lambda r, w, k: (r, w, 33), "k: expected an int"),
    (lambda r, w, k: (r, w[:20], 21), r"k: expected an int with 1 <= k <= 20"),
    (lambda r, w, k: (r, w, 2.5), "k: expected an int"),
    (lambda r, w, k: (r, w, True), "k: expected an int"),
    (lambda r, w, k: (r, w[0], k), "weight: expected 2 dimensions"),
    (lambda r, w, k: (r[:0], w, k), "empty"),
    (lambda r, w, k: (r[0, 0, 0], w, k), "0-dimensional"),
    (lambda r, w, k: (r.long(), w, k), "floating-point"),
    (lambda r, w, k: (r, w.double(), k), "float32 or bfloat16"),
    (lambda r, w, k: (r, w[:, :0], k), "empty"),
    (lambda r, w, k: ([[1.0] * 16], w, k), "torch.Tensor"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(mutate, match, backend):
    rows, weight, k = mutate(*make((2, 4), 16, 50), 2)
    with pytest.raises(ValueError, match=match) as err:
        ops.logit_extremes(rows, weight, k, backend=backend)
    assert "\n" not in str(err.value)  # one line


@pytest.mark.parametrize("kwargs,match", [({"compute": "fp8"}, "compute"), ({"backend": "tpu"}, "backend"),
                                          ({"vocab_tile": 0}, "vocab_tile")])
def test_bad_options(kwargs, match):
    rows, weight = make((3,), 16, 50)
    with pytest.raises(ValueError, match=match) as err:
        ops.logit_extremes(rows, weight, 2, **kwargs)
    assert "\n" not in str(err.value)


_COMPILE = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedlens.kernels import logit_extremes as m
w, k = ("*bf16" if sys.argv[1] == "bf16" else "*fp32"), int(sys.argv[2])
sig = {"x_ptr": "*fp32", "w_ptr": w, "top_id_out": "*i64", "top_val_out": "*fp32", "bot_id_out": "*i64",
       "bot_val_out": "*fp32", "R": "i32", "V": "i32", "d": "i32", "stride_x": "i32", "stride_w": "i32"}
const = dict(K=k, KP=triton.next_power_of_2(k), W_BF16=w == "*bf16", BF16_DOT=w == "*bf16", PREC="tf32x3",
             ROWS=64, BLOCK_V=64, BLOCK_D=32, X_BF16=w == "*bf16")  # bf16: the one-dot path of compute="bf16"
triton.compile(ASTSource(m._extremes_kernel, dict(sig, **{c: "constexpr" for c in const}), constexprs=const),
               target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
print("compiled")
"""


@pytest.mark.skipif("triton" not in BACKENDS, reason="no triton")
@pytest.mark.parametrize("wdtype,k", [("fp32", 10), ("bf16", 32)])
def test_gpu_path_compiles_for_sm90(wdtype, k, tmp_path):
    """The Triton kernel at its GPU defaults compiles to an sm_90 cubin with triton's own ptxas (no GPU needed)."""
    compile_offline(_COMPILE, [wdtype, str(k)], tmp_path)
