"""Fused logit-lens statistics in Triton (docs/design.md, "What ops.lens_stats computes, per row").

    lens_stats(xn, w, bias, softcap, targets, k)
        -> (lse, entropy, topk_ids, topk_logits, target_logit, target_rank, kl_to_final, final_top1_rank)

Rows are (site s, token t) of xn [S, T, d] (already normalised; site S-1 is the final
layer). Logits z = softcap(xn · wᵀ + bias) are never materialised for the whole
vocabulary: each program computes one [rows × BLOCK_V] tile at a time with tl.dot
(fp32 accumulation) and folds it into per-row online statistics.

Two kernels:

* phase 1 (`_final_kernel`): the final rows only, split over vocab ranges so the
  launch fills the GPU; online max / sum-exp and the top-1 key per (row block,
  vocab range). The host combines the partials into lse_final [T] and the final
  top-1 id [T] (lowest id among the maxima). About 1/S of the GEMM work.
* phase 2 (`_lens_kernel`): one program per (block of BLOCK_T tokens, site group).
  Its rows are BLOCK_T tokens × SITES_P slots; slot SITES_P-1 of every token is always
  the FINAL site, the other slots are the group's ordinary sites. Each W tile
  [BLOCK_V, d] is read once per program and reused by all its rows, and the final
  row's logits of the same tile are right there for KL. When S is larger than
  SITES_P, the sites are split into groups and each group recomputes the final row
  (only group 0 stores it). Per tile: online max m, s = Σexp(z−m), u = Σexp(z−m)(z−m)
  (entropy = log s − u/s), KL accumulator Σ q_f (z_f − z) with q_f = exp(z_f − L_f)
  from phase 1's lse (normalised by P = Σ q_f, so KL = acc/P − lse_f + lse_site is
  exact even if L_f is off by rounding), counts of z > z_tgt and z > z_ft (the
  row's own id excluded), the target logit itself, and a running top-k.

Consistency of ranks with the tile values: the thresholds z_tgt and z_ft of a row
come from a "gather tile" computed before the sweep by the same `tile_logits`
routine (same shapes, same d-loop, same dot, bias and softcap), whose columns are
the program's target and final-top-1 ids. So a threshold is the very value the
sweep computes at that id, and exact ties (duplicated unembedding rows) never count
as "larger". The own id is excluded from its count as a second guard.

Top-k: logits are packed into int64 keys (`logit_key`): (order-preserving int32 image of the
fp32 value) << 32 | (2^31−1 − id), so one integer max gives the largest logit and,
among equal logits, the lowest id (the TIE RULE of reference.py). -0.0 is mapped to
+0.0 first. The running top-k is an unordered set of k keys per row; per tile the
tile's best remaining key is inserted while it beats the row's worst key, so after
the first tiles most tiles cost one reduction (`topk_fold`). At the end the set is
emitted in descending key order (`topk_store`). These and `tile_logits` live in
kernels/tiles.py, shared with lens_kl.py and logit_extremes.py.

Precision: fp32 w uses tl.dot(input_precision=...) ("tf32x3" by default: about
fp32 accuracy on tensor cores; "ieee" is exact fp32 FMA). bf16 w keeps xn in fp32 by
splitting it into three bf16 parts x = x1 + x2 + x3 (24 significant bits) and
summing three bf16 × bf16 dots with fp32 accumulation (bf16 products are exact in
fp32), so bf16 weights get fp32-level accuracy relative to the bf16-rounded weights.
Under TRITON_INTERPRET=1 tl.dot on bf16 is broken (numpy sees the raw uint16 bits),
so there the same three parts are upcast to fp32 before the dot (same arithmetic).

softcap uses its own tanh (exp-based, odd Taylor series for |y| < 0.2): libdevice
tanh does not run under the interpreter. Where the cap saturates, distinct float64
logits can round to one fp32 value; those ties then follow the tie rule in fp32.

Status and limits:
  * tested on CPU under TRITON_INTERPRET=1 (tests/test_kernels_lens_stats.py);
  * the GPU path compiles for sm_90a (triton.compile to a cubin offline: 255
    registers, at most a few dozen bytes of spill at the default tiles, k <= 32; every
    TUNE_SPACE entry: tests/test_kernels_compile.py) but has not been run or timed on
    a GPU here (bench/gpu_check.py is the prepared check); the native bf16 dot branch
    (BF16_DOT) runs only there;
  * on a GPU phase 2 is autotuned over TUNE_SPACE (rows per program, BLOCK_V, BLOCK_D,
    warps), once per slot layout and key (d, k, token sets, operand types); with
    x_bf16 (compute="bf16") a bf16 w takes one bf16 dot per tile, not three;
  * phase 1 and phase 2 compute the final rows with different row-block shapes; if a
    GPU rounded them differently, only near-ties of the final top-1 could notice;
  * KL is not clamped at 0 (it can be ~-1e-7 for identical distributions other than
    the final site itself, whose KL is exactly 0); inputs are not checked for NaN/Inf
    (fusedlens.ops does that).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:
    from . import autotune, autotuning
    from .tiles import KEY_MIN, MAX_K, NEG, logit_key, tile_logits, topk_fold, topk_store
except ImportError:  # loaded as a file of its own (tests/test_kernels_lens_stats.py, bench scripts)
    from fusedlens.kernels import autotune, autotuning
    from fusedlens.kernels.tiles import KEY_MIN, MAX_K, NEG, logit_key, tile_logits, topk_fold, topk_store

# Phase 2's search space on a GPU (rows per program, BLOCK_V, BLOCK_D, warps), deliberately small:
# every entry compiles for sm_90a in at most 255 registers and a few bytes of stack (ptxas, offline:
# tests/test_kernels_compile.py); 128 rows with 128-wide tiles, or 16 warps, spill hundreds of bytes,
# and BLOCK_D 64 spills ~100 with fp32 weights (tf32x3).
# The first entry is the old default, and phase 1's tiles.
TUNE_SPACE = ((128, 64, 32, 8), (64, 128, 32, 8), (64, 64, 32, 8))
MAX_SETS = 16  # token sets (csrc/core/lens_epilogue.h kMaxSets)
_SETS = tl.constexpr(MAX_SETS)


@triton.jit
def _final_kernel(x_ptr, w_ptr, b_ptr, m_out, s_out, key_out,
                  T, V, d, stride_xt, stride_w, x_final_off, softcap, tiles_per_split,
                  HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, W_BF16: tl.constexpr,
                  BF16_DOT: tl.constexpr, PREC: tl.constexpr, X_BF16: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Partial (max, sum-exp, top-1 key) of the final rows over one vocab range."""
    pid_t = tl.program_id(0)
    pid_v = tl.program_id(1)
    toks = pid_t * ROWS + tl.arange(0, ROWS)
    tok_ok = toks < T
    row_off = x_final_off + toks.to(tl.int64) * stride_xt
    m = tl.full([ROWS], NEG, tl.float32)
    s = tl.zeros([ROWS], dtype=tl.float32)
    best = tl.full([ROWS], KEY_MIN, tl.int64)
    n_tiles = tl.cdiv(V, BLOCK_V)
    first = pid_v * tiles_per_split
    n_here = tl.minimum(tiles_per_split, n_tiles - first)  # >= 1: the host makes every range non-empty
    for i in range(0, n_here):
        cols = (first + i) * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        z = tile_logits(x_ptr, row_off, tok_ok, w_ptr, b_ptr, cols, col_ok, d, stride_w, softcap,
                        HAS_BIAS, HAS_SOFTCAP, W_BF16, BF16_DOT, PREC, ROWS, BLOCK_V, BLOCK_D, X_BF16)
        z = tl.where(col_ok[None, :], z, NEG)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
        keys = tl.where(col_ok[None, :], logit_key(z, cols[None, :]), KEY_MIN)
        best = tl.maximum(best, tl.max(keys, axis=1))
    out = pid_v * T + toks
    tl.store(m_out + out, m, mask=tok_ok)
    tl.store(s_out + out, s, mask=tok_ok)
    tl.store(key_out + out, best, mask=tok_ok)


@triton.jit
def _lens_kernel(x_ptr, w_ptr, b_ptr, tgt_ptr, ft_ptr, lf_ptr, sid_ptr,
                 lse_out, ent_out, tk_id_out, tk_val_out, tlogit_out, trank_out, kl_out, frank_out, set_out,
                 S, T, V, d, stride_xs, stride_xt, stride_w, softcap,
                 K: tl.constexpr, KP: tl.constexpr, BLOCK_T: tl.constexpr, SITES_P: tl.constexpr,
                 N_SETS: tl.constexpr,
                 HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, W_BF16: tl.constexpr,
                 BF16_DOT: tl.constexpr, PREC: tl.constexpr, X_BF16: tl.constexpr,
                 BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    ROWS: tl.constexpr = BLOCK_T * SITES_P
    pid_t = tl.program_id(0)
    group = tl.program_id(1)

    # ---- rows: token-major, SITES_P slots per token, the last slot is the final site
    r = tl.arange(0, ROWS)
    j = r // SITES_P
    slot = r % SITES_P
    tok = pid_t * BLOCK_T + j
    tok_ok = tok < T
    is_final = slot == SITES_P - 1
    site = tl.where(is_final, S - 1, group * (SITES_P - 1) + slot)
    row_ok = tok_ok & (is_final | (site < S - 1))
    row_off = site.to(tl.int64) * stride_xs + tok.to(tl.int64) * stride_xt
    tgt = tl.load(tgt_ptr + tok, mask=tok_ok, other=-1)
    ft = tl.load(ft_ptr + tok, mask=tok_ok, other=0)
    has_tgt = tgt >= 0

    jt = tl.arange(0, BLOCK_T)
    tok_t = pid_t * BLOCK_T + jt
    lf_t = tl.load(lf_ptr + tok_t, mask=tok_t < T, other=0.0)  # phase-1 lse of each token's final row

    # ---- gather tile: columns [0, BLOCK_T) = target ids, [BLOCK_T, 2 BLOCK_T) = final top-1 ids
    c = tl.arange(0, BLOCK_V)
    c_tok = pid_t * BLOCK_T + (c % BLOCK_T)
    c_ok = (c < 2 * BLOCK_T) & (c_tok < T)
    g_tgt = tl.load(tgt_ptr + c_tok, mask=c_ok & (c < BLOCK_T), other=0)
    g_ft = tl.load(ft_ptr + c_tok, mask=c_ok & (c >= BLOCK_T), other=0)
    g_cols = tl.where(c < BLOCK_T, tl.maximum(g_tgt, 0), g_ft)
    zg = tile_logits(x_ptr, row_off, row_ok, w_ptr, b_ptr, g_cols, c_ok, d, stride_w, softcap,
                     HAS_BIAS, HAS_SOFTCAP, W_BF16, BF16_DOT, PREC, ROWS, BLOCK_V, BLOCK_D, X_BF16)
    thr_t = tl.sum(tl.where(c[None, :] == j[:, None], zg, 0.0), axis=1)
    thr_f = tl.sum(tl.where(c[None, :] == (j + BLOCK_T)[:, None], zg, 0.0), axis=1)

    # ---- sweep state
    m = tl.full([ROWS], NEG, tl.float32)
    s = tl.zeros([ROWS], dtype=tl.float32)
    u = tl.zeros([ROWS], dtype=tl.float32)
    kl_acc = tl.zeros([ROWS], dtype=tl.float32)
    p_tot = tl.zeros([BLOCK_T], dtype=tl.float32)
    cnt_t = tl.zeros([ROWS], dtype=tl.int32)
    cnt_f = tl.zeros([ROWS], dtype=tl.int32)
    z_tgt = tl.zeros([ROWS], dtype=tl.float32)
    kslot = tl.arange(0, KP)
    k_ok = kslot < K
    top = tl.full([ROWS, KP], KEY_MIN, tl.int64)
    slot3 = tl.arange(0, SITES_P)[None, :, None]
    set_j = tl.arange(0, _SETS)
    set_acc = tl.zeros([ROWS, _SETS], dtype=tl.float32)  # Σ e^(z-m) over each token set, rescaled as s

    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        z = tile_logits(x_ptr, row_off, row_ok, w_ptr, b_ptr, cols, col_ok, d, stride_w, softcap,
                        HAS_BIAS, HAS_SOFTCAP, W_BF16, BF16_DOT, PREC, ROWS, BLOCK_V, BLOCK_D, X_BF16)
        z = tl.where(col_ok[None, :], z, NEG)

        # lse and entropy: online max with rescaling of s and u = Σ e^(z-m) (z-m)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        zc = z - m_new[:, None]
        e = tl.exp(zc)
        u = alpha * (u + s * (m - m_new)) + tl.sum(e * zc, axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new
        if N_SETS > 0:  # token-set mass: e times the tile's one-hot set membership [BLOCK_V, MAX_SETS]
            sid = tl.load(sid_ptr + cols, mask=col_ok, other=-1)
            member = (sid[:, None] == set_j[None, :]).to(tl.float32)
            set_acc = alpha[:, None] * set_acc + tl.dot(e, member, input_precision="ieee")

        # KL(p_final || p_row): the token's final row is slot SITES_P-1 of its own slot group
        zf = tl.max(tl.where(slot3 == SITES_P - 1, tl.reshape(z, [BLOCK_T, SITES_P, BLOCK_V]), NEG), axis=1)
        qf = tl.exp(zf - lf_t[:, None])  # [BLOCK_T, BLOCK_V]; padded columns give 0
        p_tot += tl.sum(qf, axis=1)
        qf_r = tl.reshape(tl.broadcast_to(qf[:, None, :], [BLOCK_T, SITES_P, BLOCK_V]), [ROWS, BLOCK_V])
        zf_r = tl.reshape(tl.broadcast_to(zf[:, None, :], [BLOCK_T, SITES_P, BLOCK_V]), [ROWS, BLOCK_V])
        kl_acc += tl.sum(qf_r * (zf_r - z), axis=1)

        # ranks: strictly larger logits, own id excluded
        cnt_t += tl.sum(((z > thr_t[:, None]) & (cols[None, :] != tgt[:, None])).to(tl.int32), axis=1)
        cnt_f += tl.sum(((z > thr_f[:, None]) & (cols[None, :] != ft[:, None])).to(tl.int32), axis=1)

        # the target logit as this sweep computes it (only in the few tiles holding a target)
        here = has_tgt & (tgt >= v0) & (tgt < v0 + BLOCK_V)
        if tl.max(here.to(tl.int32), axis=0) > 0:
            z_tgt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)

        # running top-k: insert the tile's best remaining key while it beats the row's worst
        top = topk_fold(top, tl.where(col_ok[None, :] & row_ok[:, None], logit_key(z, cols[None, :]), KEY_MIN),
                        kslot, k_ok, KP)

    # ---- finish
    log_s = tl.log(s)
    lse = m + log_s
    entropy = log_s - u / s
    lse_f = tl.max(tl.where(tl.arange(0, SITES_P)[None, :] == SITES_P - 1,
                            tl.reshape(lse, [BLOCK_T, SITES_P]), NEG), axis=1)
    lse_f_r = tl.reshape(tl.broadcast_to(lse_f[:, None], [BLOCK_T, SITES_P]), [ROWS])
    p_r = tl.reshape(tl.broadcast_to(p_tot[:, None], [BLOCK_T, SITES_P]), [ROWS])
    kl = kl_acc / p_r - lse_f_r + lse

    store = row_ok & ((slot < SITES_P - 1) | ((slot + group) == SITES_P - 1))  # final row: group 0 only
    out = site.to(tl.int64) * T + tok
    tl.store(lse_out + out, lse, mask=store)
    tl.store(ent_out + out, entropy, mask=store)
    tl.store(kl_out + out, kl, mask=store)
    tl.store(frank_out + out, cnt_f.to(tl.int64), mask=store)
    tl.store(tlogit_out + out, tl.where(has_tgt, z_tgt, float("nan")), mask=store)
    tl.store(trank_out + out, tl.where(has_tgt, cnt_t.to(tl.int64), -1), mask=store)
    if N_SETS > 0:
        tl.store(set_out + out[:, None] * N_SETS + set_j[None, :], set_acc / s[:, None],
                 mask=store[:, None] & (set_j[None, :] < N_SETS))
    topk_store(top, tk_id_out, tk_val_out, out, store, K, False)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def lens_stats(xn, w, bias, softcap, targets, k, *, block_v: int | None = None, block_d: int | None = None,
               rows_per_program: int | None = None, max_sites_per_program: int | None = None,
               final_splits: int | None = None, input_precision: str = "tf32x3", num_warps: int | None = None,
               token_sets=None, x_bf16: bool = False):
    """Fused logit-lens statistics of xn [S, T, d] (normalised; site S-1 = final layer).

    w: [V, d] float32/bfloat16; bias: [V] or None; softcap: float, 0.0 (or None) for none;
    targets: [T] int64, negative = no target (or None); 1 <= k <= min(32, V).
    Returns (lse [S,T] f32, entropy [S,T] f32, topk_ids [S,T,k] i64, topk_logits [S,T,k] f32,
    target_logit [S,T] f32 (NaN: no target), target_rank [S,T] i64 (-1: no target),
    kl_to_final [S,T] f32 = KL(p_final || p_site), final_top1_rank [S,T] i64,
    set_mass [S,T,sets] f32: Σ p(v) over each token set of token_sets [V] (-1: no set, ids < 16)).
    x_bf16: xn holds bf16-rounded values (compute="bf16"): with bf16 w, one bf16 dot per tile.
    Keyword-only knobs fix the tiling; by default the interpreter on CPU gets small tiles and a
    GPU autotunes phase 2 over TUNE_SPACE (once per shape key).
    """
    if xn.dim() != 3 or w.dim() != 2 or xn.shape[-1] != w.shape[-1]:
        raise ValueError(f"xn [S, T, d] and w [V, d] expected, got {tuple(xn.shape)} and {tuple(w.shape)}")
    if w.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"w: expected float32 or bfloat16, got {w.dtype}")
    S, T, d = xn.shape
    V = w.shape[0]
    if S == 0 or T == 0 or d == 0 or V == 0:
        raise ValueError(f"empty input: xn {tuple(xn.shape)}, w {tuple(w.shape)}")
    if not 1 <= k <= min(MAX_K, V):
        raise ValueError(f"k: expected 1 <= k <= {min(MAX_K, V)}, got {k}")
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"bias: expected shape ({V},), got {tuple(bias.shape)}")
    dev = xn.device
    if w.device != dev or (bias is not None and bias.device != dev):
        raise ValueError("xn, w, bias: expected on the same device")
    interp = _interpreting()
    if dev.type != "cuda" and not interp:
        raise ValueError("triton lens_stats: CPU tensors need TRITON_INTERPRET=1 (set before importing triton)")
    if targets is None:
        targets = torch.full((T,), -1, dtype=torch.int64, device=dev)
    if tuple(targets.shape) != (T,):
        raise ValueError(f"targets: expected shape ({T},), got {tuple(targets.shape)}")
    targets = targets.to(device=dev, dtype=torch.int64).contiguous()
    if T and int(targets.max()) >= V:
        raise ValueError(f"targets: ids must be < vocab ({V}), got {int(targets.max())}")
    softcap = float(softcap or 0.0)
    if softcap < 0:
        raise ValueError(f"softcap: expected >= 0, got {softcap}")

    xn = xn.to(torch.float32).contiguous()
    w = w.contiguous()
    if bias is not None:
        bias = bias.to(w.dtype).contiguous()
    w_bf16 = w.dtype == torch.bfloat16

    # Tiles. Under the interpreter: small fixed tiles. On a GPU, phase 2 (all but 1/S of the work)
    # is autotuned over TUNE_SPACE unless a knob is given; phase 1 keeps the first entry's tiles.
    tune = not interp and autotuning() and all(v is None for v in (block_v, block_d, rows_per_program, num_warps))
    rows0, block_v0, block_d0, warps0 = TUNE_SPACE[0]
    block_v = block_v or (128 if interp else block_v0)
    block_d = block_d or (64 if interp else block_d0)
    rows = rows_per_program or (32 if interp else rows0)
    max_sp = max_sites_per_program or 64
    for name, val in (("block_v", block_v), ("block_d", block_d), ("rows_per_program", rows),
                      ("max_sites_per_program", max_sp)):
        if val < 1 or val & (val - 1):
            raise ValueError(f"{name}: expected a power of two, got {val}")
    if block_v < 32 or block_d < 16 or max_sp < 2:
        raise ValueError("block_v >= 32, block_d >= 16 and max_sites_per_program >= 2 are needed")
    # slot layout: SITES_P slots per token, the last one the final site
    sites_p = 1 if S == 1 else min(triton.next_power_of_2(S), max_sp)
    groups = 1 if S == 1 else triton.cdiv(S - 1, sites_p - 1)
    block_t = _block_t(rows, block_v, sites_p, T)
    if 2 * block_t > block_v:
        raise ValueError(f"block_v ({block_v}) must hold 2 x block_t ({block_t}) gather columns")
    kp = triton.next_power_of_2(k)
    common = dict(HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap > 0, W_BF16=w_bf16,
                  BF16_DOT=w_bf16 and not interp, PREC=input_precision, X_BF16=w_bf16 and bool(x_bf16))
    warps1 = {} if interp else {"num_warps": 4}
    warps2 = {} if interp else {"num_warps": num_warps or warps0}
    b_arg = bias if bias is not None else w

    # ---- phase 1: final rows, split over vocab ranges
    rows1 = 16 if interp else 64
    n_tiles = triton.cdiv(V, block_v)
    blocks1 = triton.cdiv(T, rows1)
    if final_splits is None:
        final_splits = 1 if interp else max(1, min(n_tiles, triton.cdiv(4 * _sm_count(dev), blocks1)))
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(final_splits, n_tiles)))
    splits = triton.cdiv(n_tiles, tiles_per_split)  # every range starts inside the vocab
    m_p = torch.empty(splits, T, dtype=torch.float32, device=dev)
    s_p = torch.empty_like(m_p)
    key_p = torch.empty(splits, T, dtype=torch.int64, device=dev)
    _final_kernel[(blocks1, splits)](xn, w, b_arg, m_p, s_p, key_p, T, V, d, xn.stride(1), w.stride(0),
                                     (S - 1) * xn.stride(0), softcap, tiles_per_split, ROWS=rows1,
                                     BLOCK_V=block_v, BLOCK_D=block_d, **common, **warps1)
    m_all = m_p.max(0).values
    lse_final = m_all + torch.log((s_p * torch.exp(m_p - m_all)).sum(0))
    best = key_p.max(0).values
    final_top1 = (2147483647 - (best - ((best >> 32) << 32))).contiguous()

    # ---- phase 2: every row
    lse = torch.empty(S, T, dtype=torch.float32, device=dev)
    entropy = torch.empty_like(lse)
    kl = torch.empty_like(lse)
    target_logit = torch.empty_like(lse)
    topk_ids = torch.empty(S, T, k, dtype=torch.int64, device=dev)
    topk_logits = torch.empty(S, T, k, dtype=torch.float32, device=dev)
    target_rank = torch.empty(S, T, dtype=torch.int64, device=dev)
    final_rank = torch.empty_like(target_rank)
    n_sets = 0
    if token_sets is not None:
        if tuple(token_sets.shape) != (V,) or int(token_sets.min()) < -1 or int(token_sets.max()) >= MAX_SETS:
            raise ValueError(f"token_sets: expected [{V}] set ids in [-1, {MAX_SETS})")
        token_sets = token_sets.to(device=dev, dtype=torch.int32).contiguous()
        n_sets = int(token_sets.max()) + 1
    set_mass = torch.empty(S, T, n_sets, dtype=torch.float32, device=dev)
    args = (xn, w, b_arg, targets, final_top1, lse_final.contiguous(),
            token_sets if token_sets is not None else targets,  # never read when N_SETS == 0
            lse, entropy, topk_ids, topk_logits, target_logit, target_rank, kl, final_rank, set_mass,
            S, T, V, d, xn.stride(0), xn.stride(1), w.stride(0), softcap)
    fixed = dict(K=k, KP=kp, SITES_P=sites_p, N_SETS=n_sets, **common)
    if tune:
        _tuned_lens_kernel(sites_p, min(triton.next_power_of_2(T), 256))[
            lambda meta: (triton.cdiv(T, meta["BLOCK_T"]), groups)](*args, **fixed)
    else:
        _lens_kernel[(triton.cdiv(T, block_t), groups)](*args, BLOCK_T=block_t, BLOCK_V=block_v, BLOCK_D=block_d,
                                                        **fixed, **warps2)
    return lse, entropy, topk_ids, topk_logits, target_logit, target_rank, kl, final_rank, set_mass


def _block_t(rows: int, block_v: int, sites_p: int, T: int) -> int:
    """Tokens per program: rows // sites_p, at most the tokens there are and half a vocab tile (the
    gather tile's columns), and at least 16 rows for tl.dot."""
    block_t = min(max(1, rows // sites_p), triton.next_power_of_2(T), block_v // 2)
    return max(block_t, triton.cdiv(16, sites_p))


@functools.lru_cache(maxsize=None)
def _tuned_lens_kernel(sites_p: int, t_cap: int):
    """Phase 2 autotuned over TUNE_SPACE for one slot layout (BLOCK_T depends on SITES_P and the
    tokens); keyed on what changes the best tiles: d_model, k, token sets and the operand types."""
    configs, seen = [], set()
    for rows, block_v, block_d, warps in TUNE_SPACE:
        meta = (_block_t(rows, block_v, sites_p, t_cap), block_v, block_d, warps)
        if meta not in seen:
            seen.add(meta)
            configs.append(triton.Config(dict(zip(("BLOCK_T", "BLOCK_V", "BLOCK_D"), meta[:3])), num_warps=warps))
    return autotune(configs, ["d", "K", "N_SETS", "W_BF16", "X_BF16", "HAS_SOFTCAP"])(_lens_kernel)


def _sm_count(dev: torch.device) -> int:
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).multi_processor_count
    return 1
