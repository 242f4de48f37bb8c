"""ops.lens_stats on every backend present against the float64 reference on fresh random inputs.

Tolerances (docs/design.md): lse / entropy / KL / logits within 1e-4 absolute or 1e-5
relative for float32 (or, for logits in the thousands, within a few times the
float32 logits' own rounding error, which no float32 kernel can beat); top-k ids and ranks exact except where the float64 logits
have a genuine near-tie (closer than float32 rounding can resolve).
"""
import pytest
import torch

from conftest import backends_here
from fusedlens.core import backends
from fusedlens import FinalNorm, Unembed, ops
from fusedlens.ops import reference

BACKENDS = [b for b in backends_here() if b != "triton" or __import__("importlib").util.find_spec("fusedlens.kernels.lens_stats")]
NEAR = 8  # a gap under NEAR x the row's float32 logit error is a genuine near-tie


def make_case(sites, tokens, d, vocab, *, scale=1.0, norm_kind="rmsnorm", bias=True, softcap=None,
              wdtype=torch.float32, hdtype=torch.float32, dup_rows=0):
    hidden = (torch.randn(sites, tokens, d) * 3 + 0.5).to(hdtype)
    weight = torch.randn(vocab, d) * scale / d ** 0.5
    if dup_rows:  # exact ties: copies of row 0 at later ids
        weight[torch.randperm(vocab - 1)[:dup_rows] + 1] = weight[0]
    norm = {"rmsnorm": FinalNorm("rmsnorm", torch.rand(d) + 0.5, None, 1e-5),
            "gemma": FinalNorm("rmsnorm", torch.randn(d) * 0.3, None, 1e-6, 1.0),
            "layernorm": FinalNorm("layernorm", torch.rand(d) + 0.5, torch.randn(d) * 0.1, 1e-5)}[norm_kind]
    unembed = Unembed(weight.to(wdtype), (torch.randn(vocab) * scale).to(wdtype) if bias else None, softcap)
    targets = torch.randint(0, vocab, (tokens,))
    targets[torch.rand(tokens) < 0.15] = -100
    return hidden, norm, unembed, targets


def float64_logits(hidden, norm, unembed, compute="fp32"):
    xn, head = reference.matmul_operands(hidden if compute == "bf16" else hidden.double(), norm, unembed, compute)
    return head(xn.double())


def float32_error(hidden, norm, unembed, logits, compute="fp32"):
    """Per row, how far float32 arithmetic moves the logits: the scale of a genuine near-tie."""
    xn, head = reference.matmul_operands(hidden.float(), norm, unembed, compute)
    z32 = head(xn.float()).double()
    return NEAR * (z32 - logits).abs().amax(-1, keepdim=True) + 1e-12


def float32_bound(err, want, row_err):
    """What a float32 value may miss its float64 reference by: 1e-4 absolute or 1e-5 relative, or, for
    logits in the thousands, as close as the float32 logits themselves are to float64 (row_err, the
    row's NEAR-scaled error)."""
    return torch.maximum(torch.maximum(torch.full_like(err, 1e-4), 1e-5 * want.nan_to_num().abs()), row_err)


def topk_clean(logits, topk_logits, scale):
    """The rows whose top-k ids must be exact: no genuine near-tie of the float64 logits at the
    k-th value (another logit within the row's scale) or inside the top-k (topk_logits: float64,
    descending)."""
    kth = topk_logits[..., -1:]
    near_kth = ((logits - kth).abs() < scale).sum(-1) > 1
    near_inside = ((topk_logits[..., 1:] - topk_logits[..., :-1]).abs() < scale).any(-1) \
        if topk_logits.shape[-1] > 1 else torch.zeros_like(near_kth)
    return ~(near_kth | near_inside)


def assert_close_stats(got, want, logits, targets, scale, summation=0.0):
    """summation: for a backend that reduces a whole row of fp32 terms in one sum (the torch
    backend in float32), n·u, whose multiple of the sum's magnitude bounds that sum's rounding in
    any order (a whole row of 1,009 terms reached 1.7e-4 in entropy once: more than 1e-4)."""
    for name in ("lse", "entropy", "kl_to_final", "topk_logits", "target_logit", "target_logprob"):
        g, w = getattr(got, name).double(), getattr(want, name)
        assert torch.equal(torch.isnan(g), torch.isnan(w)), name
        err = (g - w).nan_to_num().abs()
        # 1e-4 absolute or 1e-5 relative, or, for logits in the thousands, as close
        # as the float32 logits themselves are to float64 (the row's NEAR-scaled error)
        row_err = scale[..., 0] if err.dim() == 2 else scale
        if name == "kl_to_final":
            # two rows' logits enter, and p_final carries the rounding of lse_final
            # (relative 2^-23 |lse_final|), which the KL multiplies
            row_err = row_err + row_err[-1:] + 4 * 2.0 ** -23 * want.lse[-1:].abs() * w.abs()
        if name in ("lse", "entropy", "kl_to_final", "target_logprob"):
            row_err = row_err + summation * (w.nan_to_num().abs() + 1)
        bound = float32_bound(err, w, row_err)
        assert bool((err <= bound).all()), f"{name}: max error {float(err.max()):.3g}"
    # Exactness of ids and ranks, except at genuine near-ties of the float64 logits.
    clean = topk_clean(logits, want.topk_logits, scale)
    assert torch.equal(got.topk_ids[clean], want.topk_ids[clean])
    t = targets.clamp_min(0)
    z_t = logits.gather(-1, t.expand(logits.shape[:2])[..., None])
    near_t = ((logits - z_t).abs() < scale).sum(-1) > 1
    assert torch.equal(got.target_rank[~near_t], want.target_rank[~near_t])
    z_f = logits.gather(-1, want.top1[-1].expand(logits.shape[:2])[..., None])
    near_f = ((logits - z_f).abs() < scale).sum(-1) > 1
    assert torch.equal(got.final_top1_rank[~near_f], want.final_top1_rank[~near_f])
    assert clean.float().mean() > 0.5 and (~near_t).any()  # the checks checked something
    depth_ok = clean.all(0) & ~near_f.any(0)
    assert torch.equal(got.prediction_depth[depth_ok], want.prediction_depth[depth_ok])


def check(backend, case, k, compute="fp32", **tiles):
    hidden, norm, unembed, targets = case
    if backend == "cpu":
        tiles = tiles or {"token_block": 3, "vocab_tile": 256}
    got = ops.lens_stats(hidden, norm, unembed, targets, k, backend=backend, compute=compute, **tiles)
    want = reference.lens_stats(hidden, norm, unembed, targets, k, compute=compute)
    logits = float64_logits(hidden, norm, unembed, compute)
    summation = unembed.vocab_size * 2.0 ** -24 if backend == "torch" else 0.0
    assert_close_stats(got, want, logits, targets, float32_error(hidden, norm, unembed, logits, compute), summation)
    return got, want


SHAPES = [  # sites, tokens, d, vocab
    (4, 9, 64, 1009),   # vocab not a multiple of any tile
    (1, 5, 32, 300),    # one site: it is its own final layer
    (3, 1, 48, 777),    # one token
]
BIG = [(3, 4, 576, 50257), (2, 3, 576, 49153)]
# The Triton interpreter takes minutes at d 576: the same GPT-2-sized vocabulary at a narrow d.
BIG_INTERPRETED = [(2, 3, 64, 50257)]


def shape_cases():
    for backend in BACKENDS:
        for shape in SHAPES + (BIG_INTERPRETED if backend == "triton" else BIG):
            yield pytest.param(backend, shape, id=f"{backend}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("backend,shape", list(shape_cases()))
@pytest.mark.parametrize("k", [1, 32])
def test_random_shapes(backend, shape, k):
    check(backend, make_case(*shape), k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_kind", ["rmsnorm", "gemma", "layernorm"])
@pytest.mark.parametrize("softcap,bias", [(None, False), (None, True), (10.0, True)])
def test_readouts(backend, norm_kind, softcap, bias):
    check(backend, make_case(3, 6, 40, 523, norm_kind=norm_kind, bias=bias, softcap=softcap, scale=4.0), 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_magnitude_logits(backend):
    got, want = check(backend, make_case(3, 7, 64, 611, scale=300.0), 8)
    assert want.lse.abs().max() > 1000  # the case really is large


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_follow_the_rule(backend):
    hidden, norm, unembed, targets = make_case(3, 8, 32, 401, bias=False)
    # Tied rows 8·e_0 give logits 8·x̂_0 exactly in any summation order, so the tie
    # survives the GEMM; a large channel 0 makes them win everywhere.
    hidden[..., 0] = 20 + hidden[..., 0].abs()
    dups = torch.cat([torch.tensor([0]), torch.randperm(400)[:6] + 1]).sort().values
    unembed.weight[dups] = 0.0
    unembed.weight[dups, 0] = 8.0
    targets[:4] = dups[3]
    got = ops.lens_stats(hidden, norm, unembed, targets, 10, backend=backend)
    want = reference.lens_stats(hidden, norm, unembed, targets, 10)
    assert torch.equal(want.topk_ids[..., :7], dups.expand(3, 8, 7))  # a 7-way tie: ascending ids
    assert torch.equal(got.topk_ids[..., :7], want.topk_ids[..., :7])
    assert torch.equal(got.final_top1_rank, want.final_top1_rank)
    assert torch.all(got.target_rank[:, :4] == 0)  # tied tokens share the best rank


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hdtype", [torch.bfloat16, torch.float16])
def test_half_precision_hidden_states(backend, hdtype):
    hidden, norm, unembed, targets = make_case(3, 5, 64, 509, hdtype=hdtype)
    got, _ = check(backend, (hidden, norm, unembed, targets), 4)
    assert got.lse.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("compute", ["fp32", "bf16"])
def test_bfloat16_weights(backend, compute):
    # Tolerance as float32 in both modes: the reference sees the same operands
    # (bf16 weights; with "bf16" also the bf16-rounded residual), and the kernels
    # accumulate in float32.
    check(backend, make_case(3, 6, 64, 1031, wdtype=torch.bfloat16), 5, compute)


@pytest.mark.parametrize("shape", [(2, 13, 577, 1000), (3, 40, 64, 2053), (1, 1, 7, 33)],
                         ids=lambda s: "x".join(map(str, s)))
def test_bf16_sweep_odd_shapes(shape):
    # The bf16 tile kernel's edges: rows not a multiple of its 12-row block, vocab
    # not a multiple of its 32-column panel or of the tile, odd d_model, and several
    # token groups sharing one packed tile (token_block 4 < tokens).
    case = make_case(*shape, wdtype=torch.bfloat16)
    check("cpu", case, 3, "bf16", token_block=4, vocab_tile=96)


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16], ids=["w_fp32", "w_bf16"])
def test_bf16_compute_on_a_cpu_without_bf16_dot(monkeypatch, wdtype):
    # Without AVX512-BF16 the rounded operands go through the fp32 sweep: the same statistics.
    kernel, weights = backends._C.lens_stats, []
    monkeypatch.setattr(backends, "bf16_dot_on_cpu", lambda: False)  # what a CPU without AVX512-BF16 reports
    monkeypatch.setattr(backends._C, "lens_stats", lambda *args: weights.append(args[1].dtype) or kernel(*args))
    check("cpu", make_case(3, 7, 577, 1009, wdtype=wdtype), 3, "bf16")
    assert weights == [torch.float32]  # the fp32 sweep ran


def test_bf16_compute_stays_within_its_stated_bound():
    # "bf16" moves each logit by at most 2^-9 · Σ|x̂ᵢ wᵢ| from the float64 logits of
    # the unrounded residual; and it rounds fp32 weights too.
    hidden, norm, unembed, targets = make_case(3, 8, 96, 701)
    got = ops.lens_stats(hidden, norm, unembed, targets, 1, compute="bf16")
    xn = norm(hidden.double())
    w = unembed.weight.bfloat16().double()
    z = xn @ w.T + unembed.bias.double()
    bound = 2.0 ** -9 * (xn.abs() @ w.abs().T) + 1e-4
    z_t = z.gather(-1, targets.clamp_min(0).expand(3, 8)[..., None])[..., 0]
    has = targets >= 0
    assert bool(((got.target_logit.double() - z_t).abs() <= bound.amax(-1))[:, has].all())
    assert bool((got.lse.double() - torch.logsumexp(z, -1)).abs().max() <= bound.amax())


def test_compute_auto_follows_the_weights():
    hidden, norm, unembed, targets = make_case(2, 5, 32, 211, wdtype=torch.bfloat16)
    auto = ops.lens_stats(hidden, norm, unembed, targets, 2)
    bf16 = ops.lens_stats(hidden, norm, unembed, targets, 2, compute="bf16")
    fp32 = ops.lens_stats(hidden, norm, unembed, targets, 2, compute="fp32")
    assert torch.equal(auto.lse, bf16.lse) and not torch.equal(auto.lse, fp32.lse)
    with pytest.raises(ValueError, match="compute"):
        ops.lens_stats(hidden, norm, unembed, targets, 2, compute="fp8")


def test_flat_rows_are_one_site():
    hidden, norm, unembed, targets = make_case(1, 6, 16, 97)
    got = ops.lens_stats(hidden[0], norm, unembed, targets, 3)
    assert got.lse.shape == (1, 6) and torch.all(got.kl_to_final == 0)


@pytest.mark.parametrize("mutate,match", [
    (lambda h, t: (h.masked_fill(h > 4, float("nan")), t), "NaN"),
    (lambda h, t: (h[..., :-1], t), "d_model"),
    (lambda h, t: (h, t[:-1]), "one per row"),
    (lambda h, t: (h, t + 10_000), "outside"),
    (lambda h, t: (h[:, :0], t[:0]), "empty"),
    (lambda h, t: (h.long(), t), "floating-point"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(mutate, match, backend):
    hidden, norm, unembed, targets = make_case(2, 4, 16, 50)
    h, t = mutate(hidden, targets)
    with pytest.raises(ValueError, match=match):
        ops.lens_stats(h, norm, unembed, t, 2, backend=backend)


def test_bad_k():
    hidden, norm, unembed, targets = make_case(2, 4, 16, 50)
    for k in (0, 33):
        with pytest.raises(ValueError, match="k:"):
            ops.lens_stats(hidden, norm, unembed, targets, k)


@pytest.mark.parametrize("k", [2.5, True, "3", 0, 33])
def test_k_must_be_an_int_in_range(k):
    # 0.1: k=2.5 reached the C++ binding (a pybind TypeError) and k=True was taken as 1
    hidden, norm, unembed, targets = make_case(2, 3, 16, 60)
    with pytest.raises(ValueError, match=r"k: expected an int with 1 <= k <= 32"):
        ops.lens_stats(hidden, norm, unembed, targets, k)


def set_cases(vocab):
    """Token-set ids [vocab]: random sets with members everywhere, a set covering nothing (id 3 unused
    below id 4), one token, everything in one set, 16 and 11 sets (the AVX2 kernel sums 8 a pass), a
    tenth of the tokens in 5 sets (sparse sets are summed from a list of their members), every other
    token in no set, and the first half in 3 sets (the dense kernels skip the blocks of the second)."""
    mixed = torch.randint(-1, 6, (vocab,))
    mixed[mixed == 3] = 4  # set 3 exists (a lower id than the largest) and has no member
    one = torch.full((vocab,), -1)
    one[vocab // 2] = 0
    sparse = torch.full((vocab,), -1)
    sparse[torch.randperm(vocab)[:vocab // 10]] = torch.arange(vocab // 10) % 5
    return {"mixed": mixed, "one_token": one, "everything": torch.zeros(vocab, dtype=torch.long),
            "sixteen": torch.arange(vocab) % 16, "eleven": torch.randint(0, 11, (vocab,)),
            "sparse": sparse, "none_in_set_0_of_2": torch.where(torch.arange(vocab) % 2 == 0, 1, -1),
            "first_half": torch.where(torch.arange(vocab) < vocab // 2, torch.arange(vocab) % 3, -1)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 5, 48, 1009), (1, 2, 32, 300), (2, 1, 40, 777)], ids=str)
def test_token_set_mass_against_float64(backend, shape):
    check_set_mass(backend, shape)


def check_set_mass(backend, shape):
    """Every set_cases() partition's mass against float64 softmax sums (also bench/gpu_check.py's check)."""
    hidden, norm, unembed, targets = make_case(*shape, scale=3.0)
    logits = float64_logits(hidden, norm, unembed)
    p = torch.softmax(logits, -1)
    for i, (name, sets) in enumerate(set_cases(shape[3]).items()):
        # cpu: tiles that start at a multiple of 8 ids or not (where the ISA's GEMM allows it)
        tiles = {"token_block": 2, "vocab_tile": (96, 100)[i % 2]} if backend == "cpu" else {}
        got = ops.lens_stats(hidden, norm, unembed, targets, 2, backend=backend, token_sets=sets, **tiles)
        n = int(sets.max()) + 1
        want = torch.stack([p[..., sets == j].sum(-1) for j in range(n)], -1)
        assert got.set_mass.shape == (shape[0], shape[1], n), name
        assert bool(((got.set_mass.double() - want).abs() <= 1e-5 + 1e-5 * want).all()), \
            (name, float((got.set_mass.double() - want).abs().max()))
        ref = reference.lens_stats(hidden, norm, unembed, targets, 2, token_sets=sets)
        assert torch.allclose(ref.set_mass, want, atol=1e-12)
        if name == "everything":
            assert bool(((got.set_mass[..., 0] - 1).abs() <= 1e-5).all())
        if name == "mixed":
            assert bool((got.set_mass[..., 3] == 0).all())  # a set with no member has mass exactly 0
        # the other statistics do not move
        plain = ops.lens_stats(hidden, norm, unembed, targets, 2, backend=backend, **tiles)
        assert torch.equal(plain.topk_ids, got.topk_ids) and torch.allclose(plain.lse, got.lse, rtol=0, atol=0)


def test_token_set_mass_survives_a_rising_max():
    # logits that grow along the vocabulary: every tile raises the running max, so the set sums are rescaled
    hidden, norm, unembed, targets = make_case(2, 3, 32, 2000, bias=False)
    unembed = Unembed(unembed.weight, torch.linspace(0, 300, 2000), None)
    sets = torch.arange(2000) % 3 - 1
    got = ops.lens_stats(hidden, norm, unembed, targets, 1, backend="cpu", token_sets=sets, vocab_tile=128)
    p = torch.softmax(float64_logits(hidden, norm, unembed), -1)
    want = torch.stack([p[..., sets == j].sum(-1) for j in range(2)], -1)
    assert bool(((got.set_mass.double() - want).abs() <= 1e-5).all())


@pytest.mark.parametrize("sets, message", [
    (torch.full((50,), 16), r"token_sets: set ids must be -1 \(no set\) or in \[0, 16\), got 16..16"),
    (torch.full((50,), -2), r"got -2..-2"),
    (torch.zeros(49, dtype=torch.long), "token_sets: expected 50 ids"),
    (torch.zeros(50), "token_sets: expected a 1-D integer tensor"),
])
def test_bad_token_sets_are_clear_errors(sets, message):
    hidden, norm, unembed, targets = make_case(2, 3, 16, 50)
    with pytest.raises(ValueError, match=message):
        ops.lens_stats(hidden, norm, unembed, targets, 1, token_sets=sets)
