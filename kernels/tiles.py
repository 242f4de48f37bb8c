"""Triton helpers shared by the vocabulary-sweep kernels (lens_stats.py, lens_kl.py, logit_extremes.py).

One place for the logit tile and the running top-k, so every kernel computes a logit and
orders equal logits the same way. lens_stats.py's docstring explains the arithmetic.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Padded vocab columns get this logit: finite, so exp() underflows to 0 without 0·inf NaNs.
NEG = tl.constexpr(-1.0e30)
# The empty slot of a top-k set and the key of a masked tile entry: smaller than any logit_key.
KEY_MIN = tl.constexpr(-9223372036854775808)
_KEY_MAX = tl.constexpr(9223372036854775807)  # unused top-k slots, so they are never the worst
# Largest k of a running top-k: the set is a [rows, KP] tile held in registers, and the sm_90a
# compile checks (tests/test_kernels_*.py) go up to k = 32.
MAX_K = 32


@triton.jit
def _tanh(y):
    # tanh from exp (odd Taylor series for |y| < 0.2, where 1 - exp(-2|y|) cancels): libdevice tanh
    # does not run under TRITON_INTERPRET=1.
    a = tl.abs(y)
    t = tl.exp(-2.0 * a)
    big = (1.0 - t) / (1.0 + t)
    a2 = a * a
    small = a * (1.0 + a2 * (-0.3333333333333333 + a2 * (0.13333333333333333 + a2 * (-0.05396825396825397
                                                                                    + a2 * 0.021869488536155203))))
    r = tl.where(a < 0.2, small, big)
    return tl.where(y < 0.0, -r, r)


@triton.jit
def logit_key(z, ids):
    """int64 key, larger = (larger logit, then lower id): one integer max gives the tie rule of
    ops/reference.py. (Order-preserving int32 image of the fp32 value) << 32 | (2^31-1 - id)."""
    z = tl.where(z == 0.0, 0.0, z)  # -0.0 -> +0.0: equal logits must compare equal
    b = z.to(tl.int32, bitcast=True)
    o = tl.where(b >= 0, b, b ^ 0x7FFFFFFF)
    return (o.to(tl.int64) << 32) + (2147483647 - ids.to(tl.int64))


@triton.jit
def _key_id(key):
    # the id a logit_key holds
    hi = key >> 32
    return 2147483647 - (key - (hi << 32))


@triton.jit
def _key_value(key):
    # the fp32 logit a logit_key holds
    o = (key >> 32).to(tl.int32)
    b = tl.where(o >= 0, o, o ^ 0x7FFFFFFF)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def topk_fold(top, keys, kslot, k_ok, KP: tl.constexpr):
    """The running top-k of each row: `top` [ROWS, KP] is an unordered set of keys (slots >= K,
    where k_ok is False, unused; KEY_MIN = empty), `keys` [ROWS, BLOCK_V] a tile's keys (KEY_MIN
    where masked). The tile's best remaining key replaces the row's worst while it beats it, so
    once the set holds large keys most tiles cost one reduction. Returns the new set."""
    worst = tl.min(tl.where(k_ok[None, :], top, _KEY_MAX), axis=1)
    cand = tl.max(keys, axis=1)
    go = tl.max((cand > worst).to(tl.int32), axis=0) > 0
    while go:
        ins = cand > worst
        wpos = tl.min(tl.where(k_ok[None, :] & (top == worst[:, None]), kslot[None, :], KP), axis=1)
        top = tl.where(ins[:, None] & (kslot[None, :] == wpos[:, None]), cand[:, None], top)
        keys = tl.where(keys == cand[:, None], KEY_MIN, keys)
        worst = tl.min(tl.where(k_ok[None, :], top, _KEY_MAX), axis=1)
        cand = tl.max(keys, axis=1)
        go = tl.max((cand > worst).to(tl.int32), axis=0) > 0
    return top


@triton.jit
def topk_store(top, id_out, val_out, out, mask, K: tl.constexpr, NEGATE: tl.constexpr):
    """Store a row's top-k set in descending key order at id_out / val_out + out * K + i;
    NEGATE: the keys were of -z (a bottom-k), so the values are negated back."""
    for i in range(0, K):
        best = tl.max(top, axis=1)
        val = _key_value(best)
        if NEGATE:
            val = -val
        tl.store(id_out + out * K + i, _key_id(best), mask=mask)
        tl.store(val_out + out * K + i, val, mask=mask)
        top = tl.where(top == best[:, None], KEY_MIN, top)


@triton.jit
def tile_logits(x_ptr, row_off, row_ok, w_ptr, b_ptr, cols, col_ok, d, stride_w, softcap,
                HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, W_BF16: tl.constexpr,
                BF16_DOT: tl.constexpr, PREC: tl.constexpr,
                ROWS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, X_BF16: tl.constexpr = False):
    """softcap(x[rows] · w[cols]ᵀ + b[cols]) as a [ROWS, BLOCK_V] fp32 tile (masked rows/cols load zeros).
    Every kernel's logits come from here, so a value computed for a gather column equals the same
    id's value in a sweep tile. X_BF16 (bf16 w only): x already holds bf16 values (compute="bf16"),
    so its 2nd and 3rd parts are zero and one bf16 dot gives the same tile as three."""
    acc = tl.zeros([ROWS, BLOCK_V], dtype=tl.float32)
    w_rows = w_ptr + cols.to(tl.int64) * stride_w
    for k0 in range(0, d, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        k_ok = ks < d
        x = tl.load(x_ptr + row_off[:, None] + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        x = x.to(tl.float32)
        w = tl.load(w_rows[:, None] + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.trans(w)  # [BLOCK_D, BLOCK_V]
        if W_BF16 and X_BF16:
            if BF16_DOT:
                acc = tl.dot(x.to(tl.bfloat16), wt, acc)
            else:  # interpreter (see below)
                acc = tl.dot(x, wt.to(tl.float32), acc)
        elif W_BF16:
            x1 = x.to(tl.bfloat16)
            r1 = x - x1.to(tl.float32)
            x2 = r1.to(tl.bfloat16)
            x3 = (r1 - x2.to(tl.float32)).to(tl.bfloat16)
            if BF16_DOT:
                part = tl.dot(x3, wt)
                part = tl.dot(x2, wt, part)
                acc = tl.dot(x1, wt, acc) + part
            else:  # interpreter: same parts, dot in fp32 (bf16 x bf16 products are exact in fp32)
                wf = wt.to(tl.float32)
                part = tl.dot(x3.to(tl.float32), wf)
                part = tl.dot(x2.to(tl.float32), wf, part)
                acc = tl.dot(x1.to(tl.float32), wf, acc) + part
        else:
            acc = tl.dot(x, wt, acc, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc
