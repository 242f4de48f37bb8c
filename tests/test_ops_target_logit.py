"""ops.target_logit (the C++ and Triton gather-dot) against float64 on every backend present."""
import pytest
import torch

from conftest import backends_here
from fusedlens import ops

BACKENDS = backends_here()
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5}  # same inputs; only the accumulation differs


def oracle(x, w, ids, bias, softcap):
    safe = ids.clamp_min(0)
    z = (x.double() * w[safe].double()).sum(-1)
    if bias is not None:
        z = z + bias[safe].double()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return z.masked_fill(ids < 0, float("nan"))


def shapes(backend):
    # The Triton interpreter runs one program per row in Python: keep it small.
    if backend == "triton":
        return [(1, 1, 3), (7, 13, 1009), (33, 576, 257)]
    return [(1, 1, 3), (7, 13, 1009), (333, 576, 50257), (64, 577, 49153)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias,softcap", [(False, None), (True, None), (True, 30.0)])
def test_matches_float64(backend, wdtype, with_bias, softcap):
    for rows, d, vocab in shapes(backend):
        check_target_logit(backend, rows, d, vocab, wdtype, with_bias, softcap)


def check_target_logit(backend, rows, d, vocab, wdtype, with_bias, softcap):
    """Fresh random rows, weights and ids (a fifth ignored) against float64 (also bench/gpu_check.py's check)."""
    x = torch.randn(rows, d) * 2
    w = torch.randn(vocab, d).to(wdtype)
    bias = torch.randn(vocab).to(wdtype) if with_bias else None
    ids = torch.randint(0, vocab, (rows,))
    ids[torch.rand(rows) < 0.2] = -100
    got = ops.target_logit(x, w, ids, bias, softcap=softcap, backend=backend)
    want = oracle(x, w, ids, bias, softcap)
    assert got.dtype == torch.float32 and got.shape == (rows,)
    assert torch.equal(torch.isnan(got), ids < 0)
    keep = ids >= 0
    err = (got[keep].double() - want[keep]).abs() / (1 + want[keep].abs())
    assert err.max() < TOL[wdtype] if keep.any() else True, (rows, d, vocab, float(err.max()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_inputs_give_float32(backend):
    x = torch.randn(5, 32).to(torch.float16)
    w = torch.randn(100, 32)
    ids = torch.randint(0, 100, (5,))
    got = ops.target_logit(x, w, ids, backend=backend)
    torch.testing.assert_close(got.double(), oracle(x.float(), w, ids, None, None), rtol=1e-5, atol=1e-5)


def test_default_backend_on_cpu_is_the_extension():
    assert ops.pick_backend("cpu", None) == "cpu", "the C++ extension fusedlens._C did not build"


@pytest.mark.parametrize("mutate,match", [
    (lambda x, w, i: (x[:, :-1], w, i), "weight's d_model"),
    (lambda x, w, i: (x.masked_fill(x == x.max(), float("inf")), w, i), "NaN/Inf"),  # always one Inf
    (lambda x, w, i: (x, w, i + 50), r"outside \[0, 60\)"),
    (lambda x, w, i: (x, w, i[:3]), "one per row"),
    (lambda x, w, i: (x.long(), w, i), "floating-point"),
    (lambda x, w, i: (x[:0], w, i[:0]), "empty"),
])
def test_bad_input(mutate, match):
    x, w, i = mutate(torch.randn(4, 8), torch.randn(60, 8), torch.randint(10, 60, (4,)))
    with pytest.raises(ValueError, match=match):
        ops.target_logit(x, w, i)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        ops.target_logit(torch.randn(2, 4), torch.randn(5, 4), torch.tensor([0, 1]), backend="tpu")
