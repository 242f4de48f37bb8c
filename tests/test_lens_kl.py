"""fusedlens.lens_kl (fused KL and its gradient) on every backend against float64 autograd.

The oracle materialises the logits in float64 and differentiates KL(p_final ‖ q) with
autograd; a random upstream gradient per row checks the backward's scaling. Tolerances:
KL and lse within 1e-4 absolute or 1e-5 relative (DESIGN.md); gradients within 1e-5
relative error (‖got − want‖ / ‖want‖) for float32.
"""
import pytest
import torch

from conftest import backends_here
from fusedlens import FinalNorm, Unembed
from fusedlens.lens_kl import lens_kl, reference_lens_kl

BACKENDS = [b for b in backends_here() if b != "torch"]
GRAD_RTOL = 1e-5


def make_case(sites, tokens, d, vocab, *, bias=True, softcap=None, scale=2.0, wdtype=torch.float32):
    xn = torch.randn(sites, tokens, d) * 1.5 + 0.2
    xf = torch.randn(tokens, d) * 1.5
    weight = (torch.randn(vocab, d) * scale / d ** 0.5).to(wdtype)
    unembed = Unembed(weight, (torch.randn(vocab) * scale).to(wdtype) if bias else None, softcap)
    return xn, xf, unembed


def oracle(xn, xf, unembed, upstream):
    x64 = xn.double().requires_grad_(True)
    u64 = Unembed(unembed.weight.double(), None if unembed.bias is None else unembed.bias.double(), unembed.softcap)
    want = reference_lens_kl(x64, xf.double(), u64)
    (grad,) = torch.autograd.grad((want.kl * upstream.double()).sum(), x64)
    return want, grad


def assert_close(name, got, want, rtol=1e-5, atol=1e-4):
    err = (got.double() - want).abs()
    bound = torch.maximum(torch.full_like(err, atol), rtol * want.abs())
    assert bool((err <= bound).all()), f"{name}: max error {float(err.max()):.3g}"


def rel_err(got, want):
    return float((got.double() - want).norm() / want.norm())


def kernel_kwargs(backend):
    return {"token_block": 3, "vocab_tile": 128} if backend == "cpu" else {}


def check(backend, case):
    xn, xf, unembed = case
    upstream = torch.randn(xn.shape[:2])
    x = xn.clone().requires_grad_(True)
    got = lens_kl(x, xf, unembed, backend=backend, **kernel_kwargs(backend))
    (got.kl * upstream).sum().backward()
    want, grad = oracle(xn, xf, unembed, upstream)
    assert_close("kl", got.kl.detach(), want.kl.detach())
    assert_close("lse", got.lse, want.lse)
    assert_close("lse_final", got.lse_final, want.lse_final)
    assert rel_err(x.grad, grad) < GRAD_RTOL, f"grad: relative error {rel_err(x.grad, grad):.3g}"
    assert want.kl.min() > 0.05  # distributions differ: the gradient is not ~0
    return got


SHAPES = [  # sites, tokens, d, vocab
    (3, 7, 64, 1009),  # vocab not a multiple of any tile
    (1, 1, 32, 300),   # one site, one token
    (4, 5, 48, 129),   # one column past a tile
    (33, 2, 16, 97),   # more sites than one Triton program holds: site groups
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_shapes(backend, shape):
    check(backend, make_case(*shape))


@pytest.mark.parametrize("backend", ["cpu"])
def test_real_sizes_cpu(backend):
    if backend not in BACKENDS:
        pytest.fail("the C++ extension is not built")
    check(backend, make_case(2, 5, 576, 49153, scale=4.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("softcap,bias", [(None, False), (3.0, True), (1.0, False)])
def test_bias_and_softcap(backend, softcap, bias):
    check(backend, make_case(3, 4, 40, 523, bias=bias, softcap=softcap, scale=4.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_weights(backend):
    # The oracle sees the same bf16-rounded weights; kernels accumulate in float32.
    check(backend, make_case(2, 4, 64, 517, wdtype=torch.bfloat16))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_kind", ["rmsnorm", "gemma", "layernorm"])
def test_norm_differentiated_outside(backend, norm_kind):
    """Residual → (translator) → final norm by autograd → fused op; grads wrt h and A against float64."""
    sites, tokens, d, vocab = 3, 4, 32, 401
    norm = {"rmsnorm": FinalNorm("rmsnorm", torch.rand(d) + 0.5, None, 1e-5),
            "gemma": FinalNorm("rmsnorm", torch.randn(d) * 0.3, None, 1e-6, 1.0),
            "layernorm": FinalNorm("layernorm", torch.rand(d) + 0.5, torch.randn(d) * 0.1, 1e-5)}[norm_kind]
    _, _, unembed = make_case(1, 1, d, vocab, softcap=5.0, scale=4.0)
    h = torch.randn(sites, tokens, d) * 3 + 0.5
    hf = torch.randn(tokens, d) * 3
    A = torch.randn(sites, d, d) * 0.05
    upstream = torch.randn(sites, tokens)

    def grads(dtype, run):
        hh = h.to(dtype).requires_grad_(True)
        aa = A.to(dtype).requires_grad_(True)
        xn = norm(hh + torch.einsum("std,sed->ste", hh, aa))
        kl = run(xn, norm(hf.to(dtype)))
        return torch.autograd.grad((kl * upstream.to(dtype)).sum(), (hh, aa))

    u64 = Unembed(unembed.weight.double(), unembed.bias.double(), unembed.softcap)
    want = grads(torch.float64, lambda xn, xf: reference_lens_kl(xn.double(), xf.double(), u64).kl)
    got = grads(torch.float32, lambda xn, xf: lens_kl(xn, xf, unembed, backend=backend, **kernel_kwargs(backend)).kl)
    for name, g, w in zip(("h", "A"), got, want):
        assert rel_err(g, w) < GRAD_RTOL, f"grad {name}: relative error {rel_err(g, w):.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_path_matches(backend):
    xn, xf, unembed = make_case(2, 6, 32, 333)
    with_grad = lens_kl(xn.clone().requires_grad_(True), xf, unembed, backend=backend)
    plain = lens_kl(xn, xf, unembed, backend=backend)
    assert not plain.kl.requires_grad and with_grad.kl.requires_grad
    with torch.no_grad():  # no gradient formed although xn requires one
        quiet = lens_kl(xn.clone().requires_grad_(True), xf, unembed, backend=backend)
    assert not quiet.kl.requires_grad and torch.equal(quiet.kl, plain.kl)
    assert torch.allclose(plain.kl, with_grad.kl.detach(), rtol=1e-6, atol=1e-6)


def test_identical_distributions_give_zero():
    xn, xf, unembed = make_case(2, 5, 32, 211)
    xn[:] = xf  # every site equals the final layer
    got = lens_kl(xn.requires_grad_(True), xf, unembed)
    assert got.kl.abs().max() < 1e-5
    got.kl.sum().backward()
    assert xn.grad.abs().max() < 1e-5  # the minimum: zero gradient


@pytest.mark.parametrize("mutate,match", [
    (lambda x, f: (x.index_put((torch.tensor([1]), torch.tensor([2]), torch.tensor([3])), torch.tensor(float("nan"))),
                   f), "NaN"),
    (lambda x, f: (x, f.index_fill(0, torch.tensor([1]), float("inf"))), "NaN/Inf"),
    (lambda x, f: (x[..., :-1], f), "d_model"),
    (lambda x, f: (x, f[:-1]), "one per token"),
    (lambda x, f: (x[:, :0], f[:0]), "empty"),
    (lambda x, f: (x.long(), f), "floating-point"),
    (lambda x, f: (x, f.clone().requires_grad_(True)), "detach"),
])
def test_bad_input(mutate, match):
    xn, xf, unembed = make_case(2, 4, 16, 50)
    x, f = mutate(xn, xf)
    with pytest.raises(ValueError, match=match):
        lens_kl(x, f, unembed)


def test_real_model_residuals(real_lm):
    """SmolLM2-135M's own residuals (large, anisotropic) through its norm: cpu backend vs float64 autograd."""
    from fusedlens.capture import capture_residuals
    from fusedlens.demo import pydoc_text

    start = int(torch.randint(0, 20000, ()))
    ids = real_lm.tokenizer(pydoc_text()[start:start + 200], return_tensors="pt").input_ids[:, :4]
    hidden = capture_residuals(real_lm, ids).hidden
    upstream = torch.rand(hidden.shape[0] - 1, hidden.shape[1]) + 0.5

    def grad(dtype, run):
        h = hidden[:-1].to(dtype).requires_grad_(True)
        kl = run(real_lm.norm(h), real_lm.norm(hidden[-1].to(dtype)))
        (g,) = torch.autograd.grad((kl * upstream.to(dtype)).sum(), h)
        return kl.detach(), g

    u = real_lm.unembed
    want_kl, want = grad(torch.float64, lambda x, f: reference_lens_kl(x, f, Unembed(u.weight.double())).kl)
    got_kl, got = grad(torch.float32, lambda x, f: lens_kl(x, f, u, backend="cpu").kl)
    assert_close("kl", got_kl, want_kl)
    assert want_kl[0].mean() > 1.0  # the early layers really are far from the final one
    assert rel_err(got, want) < GRAD_RTOL, f"grad: relative error {rel_err(got, want):.3g}"
