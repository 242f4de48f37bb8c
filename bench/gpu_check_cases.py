"""What bench/gpu_check.py runs: the correctness cases (the kernel tests' own checks, at real sizes
and odd shapes) and the timed variants (Triton, naive PyTorch, the bare cuBLAS GEMMs).

Correctness reuses the test suites' helpers and tolerances unchanged (tests/test_ops_*.py): each
case builds fresh random inputs on the default device (gpu_check sets it to the GPU), runs the op
with backend="triton" and compares it with the float64 reference on the same device.
"""
from __future__ import annotations

import types

import torch

K = 10  # top-k of every timed and real-size lens_stats case (one compiled variant serves both)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (d_model, vocab) of SmolLM2-135M, Gemma-2B and Llama-3-8B; the dry run's tiny stand-ins
REAL_PAIRS = ((576, 49152), (2048, 256000), (4096, 128256))
DRY_PAIRS = ((48, 517),)


def correctness_cases(dry: bool):
    """[(name, fn, tuned)], most important first (real sizes), so a time guard drops the odd extras last.

    tuned: the case runs at a timed shape's specialization (no bias, k = K, the timed slot layouts,
    widths and vocabularies that are multiples of 16) and autotunes as the timing will, so the kernels it
    compiles serve the timing too; the other cases take each kernel's first configuration
    (FUSEDLENS_TRITON_AUTOTUNE=0) and compile once instead of once per configuration."""
    import test_ops_lens_kl as tkl
    import test_ops_lens_stats as tls
    import test_ops_logit_extremes as tle
    import test_ops_ridge_gram as trg
    import test_ops_target_logit as ttl

    bf16 = torch.bfloat16
    pairs = DRY_PAIRS if dry else REAL_PAIRS
    # 31 and 33 sites: the slot layouts of the SmolLM2 and Llama timings (32 and 64 slots per token);
    # 30 lens sites: the tuned-lens timings' layout
    s31, tok, tok33, kl_shape = (3, 4, 2, (2, 4)) if dry else (31, 16, 16, (30, 16))
    d8, v8 = pairs[-1]

    def lens(S, T, d, v, w, compute=None, bias=False):  # compute: what "auto" picks (bf16 for bf16 weights)
        compute = compute or ("bf16" if w == bf16 else "fp32")
        return lambda: tls.check("triton", tls.make_case(S, T, d, v, wdtype=w, bias=bias), K, compute)

    cases = [(f"lens_stats 33x{tok33}x{d8}x{v8} w=bf16", lens(33, tok33, d8, v8, bf16), True)]
    extras = []  # per real size, the checks at untimed specializations: after every timed one
    for d, v in pairs:
        for wname in ("bf16", "fp32", "fp16"):
            cases.append((f"lens_stats {s31}x{tok}x{d}x{v} w={wname}", lens(s31, tok, d, v, DTYPES[wname]), True))
        cases.append((f"lens_kl {'x'.join(map(str, kl_shape))}x{d}x{v} w=fp32 fwd+grad",
                      lambda d=d, v=v: tkl.check("triton", tkl.make_case(*kl_shape, d, v, bias=False)), True))
        cases.append((f"lens_kl {'x'.join(map(str, kl_shape))}x{d}x{v} w=bf16 compute=bf16 fwd+grad",
                      lambda d=d, v=v: tkl.check_bf16("triton", bf16, (*kl_shape, d, v, False, None)), True))
        n = 64 if dry else 4096
        cases.append((f"ridge_gram 3x{n}x{d}", lambda d=d, n=n: ridge_case(trg, 3, n, d, 4), True))
        extras.append((f"lens_stats {s31}x{tok}x{d}x{v} w=bf16 compute=fp32 bias", lens(s31, tok, d, v, bf16, "fp32", True),
                       False))
        extras.append((f"lens_stats token_sets 3x8x{d}x{v}", lambda d=d, v=v: tls.check_set_mass("triton", (3, 8, d, v)),
                       False))
        rows = 8 if dry else 64
        for wname in ("bf16", "fp32"):
            extras.append((f"logit_extremes {rows}x{d}x{v} w={wname}",
                           lambda d=d, v=v, w=DTYPES[wname]: tle.check("triton", *tle.make((rows,), d, v, wdtype=w), K),
                           False))
        extras.append((f"target_logit {rows * 4}x{d}x{v}",
                       lambda d=d, v=v: ttl.check_target_logit("triton", rows * 4, d, v, bf16, True, None), False))
    cases += extras
    # the suites' odd shapes and special cases, as the tests run them
    odd = [(f"lens_stats odd {'x'.join(map(str, s))}", lambda s=s: tls.check("triton", tls.make_case(*s), K))
           for s in tls.SHAPES]
    odd += [("lens_stats exact ties", lambda: tls.test_exact_ties_follow_the_rule("triton")),
            ("lens_stats large logits", lambda: tls.test_large_magnitude_logits("triton")),
            ("lens_stats softcap+layernorm", lambda: tls.test_readouts("triton", "layernorm", 10.0, True)),
            ("lens_stats fp16 hidden", lambda: tls.test_half_precision_hidden_states("triton", torch.float16))]
    odd += [(f"lens_kl odd {'x'.join(map(str, s))}", lambda s=s: tkl.check("triton", tkl.make_case(*s)))
            for s in tkl.SHAPES]
    odd += [("lens_kl softcap", lambda: tkl.test_bias_and_softcap("triton", 3.0, True)),
            ("lens_kl bf16 softcap", lambda: tkl.check_bf16("triton", torch.float32, tkl.BF16_SHAPES[2]))]
    odd += [(f"ridge_gram odd {'x'.join(map(str, s))}", lambda s=s: trg.test_gram_matches_float64_reference("triton", s))
            for s in trg.SHAPES]
    odd += [("ridge_gram bf16 strided", lambda: trg.test_gram_bfloat16_and_strided_inputs("triton"))]
    odd += [(f"logit_extremes odd {s}", lambda s=s: tle.check("triton", *tle.make(*s), min(K, s[2]))) for s in tle.SHAPES[:4]]
    odd += [("target_logit odd", lambda: ttl.test_matches_float64("triton", torch.float32, True, 30.0))]
    return cases + [(name, fn, False) for name, fn in odd]


def ridge_case(trg, S, N, d, m):
    """The suite's Gram check at N rows: entry (i, j) within tol·sqrt(G_ii G_jj), tol the suite's 1e-5 or,
    for more rows than it was set for, 4·sqrt(N)·2⁻²⁴ (the probabilistic bound of tests/ridge_bounds.py)."""
    x, y, sx, sy = trg.make_batch(S, N, d, m)
    start = torch.randn(S, d + m + 1, d + m + 1, dtype=torch.float64)
    from fusedlens.ops import reference_gram, ridge_gram

    got = ridge_gram(x, y, sx, sy, start.clone(), backend="triton")
    assert torch.equal(torch.tril(got, -1), torch.tril(start, -1)), "ridge_gram wrote below the diagonal"
    trg.assert_gram_close(torch.triu(got - start), reference_gram(x, y, sx, sy), tol=max(1e-5, 4 * N ** 0.5 * 2.0 ** -24))


# ---------------------------------------------------------------- timed variants

def _randn(g, *shape):  # drawn on the device itself: gigabytes of inputs in milliseconds, not seconds
    return torch.randn(*shape, generator=g, device=g.device)


def lens_inputs(S, T, d, V, wname, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    xn = _randn(g, S, T, d)
    w = (_randn(g, V, d) / d ** 0.5 * 4).to(DTYPES[wname])
    targets = torch.randint(0, V, (T,), generator=g, device=device)
    return xn, w, targets


def lens_variants(xn, w, targets):
    """name -> fn() for one lens shape: the fused op, naive PyTorch and the bare GEMM floors."""
    from lens_stats_triton import bare_matmul, naive_torch
    from fusedlens import Unembed, ops
    from fusedlens.ops import reference

    unembed = Unembed(w)
    bf16 = w.dtype == torch.bfloat16
    w_bf16 = w if bf16 else w.bfloat16()  # converted once, outside the timed floor
    out = {"triton": lambda: ops.lens_stats(xn, reference.no_norm, unembed, targets, K, backend="triton"),
           "naive_torch": lambda: naive_torch(xn, w, targets, K, gemm_dtype=w.dtype if bf16 else None),
           "cublas_bf16": lambda: bare_matmul(xn, w_bf16)}
    if not bf16:
        out["cublas_tf32"] = lambda: bare_matmul(xn, w, tf32=True)
        out["cublas_fp32"] = lambda: bare_matmul(xn, w)
    return out


def tuned_variants(L, T, d, V, wname, device, seed=0):
    """One tuned-lens step's loss and backward: fused lens_kl vs naive autograd on materialised logits
    (the torch backend) vs the two GEMMs of the step (bench/tuned.py's floor)."""
    from tuned import gemm_floor
    from fusedlens import Unembed
    from fusedlens.ops import lens_kl

    g = torch.Generator(device=device).manual_seed(seed)
    xn = _randn(g, L, T, d) * 1.5
    xf = _randn(g, T, d) * 1.5
    unembed = Unembed((_randn(g, V, d) * 2 / d ** 0.5).to(DTYPES[wname]))
    hidden = torch.cat([xn, xf[None]])

    def step(backend):
        x = xn.detach().requires_grad_(True)
        if backend == "torch":  # naive: materialised logits, the GEMMs in the weights' dtype (autocast for bf16)
            with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=wname == "bf16"):
                kl = lens_kl(x, xf, unembed, backend="torch", compute="fp32").kl
        else:
            kl = lens_kl(x, xf, unembed, backend=backend).kl
        kl.float().mean(1).sum().backward()
        return x.grad

    lens = types.SimpleNamespace(unembed=unembed)
    out = {"triton": lambda: step("triton"), "naive_torch": lambda: step("torch"),
           "floor_bf16": lambda: gemm_floor(lens, hidden, torch.bfloat16)}
    if wname == "fp32":
        out["floor_tf32"] = lambda: _tf32(lambda: gemm_floor(lens, hidden, torch.float32))
        out["floor_fp32"] = lambda: gemm_floor(lens, hidden, torch.float32)
    return out


def ridge_variants(S, N, d, m, device, seed=0):
    """ops.ridge_gram (Triton) vs the float64 torch backend vs the bare fp32 Gram (X.T @ X) of the same size."""
    from fusedlens.ops import ridge_gram

    g = torch.Generator(device=device).manual_seed(seed)
    x = _randn(g, S, N, d) * 3 + 1
    y = _randn(g, N, m)
    sx, sy = x[:, :1].mean(1).contiguous(), y[:1].mean(0)
    out = torch.zeros(S, d + m + 1, d + m + 1, dtype=torch.float64, device=device)
    aug = torch.cat([x, y.expand(S, N, m), torch.ones(S, N, 1, device=device)], -1)
    return {"triton": lambda: ridge_gram(x, y, sx, sy, out, backend="triton"),
            "torch_float64": lambda: ridge_gram(x, y, sx, sy, out, backend="torch"),
            "gemm_fp32": lambda: aug.mT @ aug}


def _tf32(fn):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        return fn()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
