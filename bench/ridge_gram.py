"""Streaming ridge accumulation (ops.ridge_gram through probe's RidgeAccumulator): fused fp32 syrk
(cpu backend) vs the naive float64 `X.T @ X` in PyTorch.

python bench/ridge_gram.py [--batches 8] [--rows 512] [--threads 1] [--e2e-windows 4]   -> bench/results/ridge_gram.json
pytest bench/ridge_gram.py --benchmark-json=bench/results/ridge_gram_pytest.json   (pytest-benchmark, two batches)

Same batches for every variant ([31 sites, rows, 576] residual-like activations, 4
targets); times are the best of --repeats passes over all batches. R² (train, along
an α path, and on a held-out set) from the two accumulations must agree within 1e-6.
With --e2e-windows > 0 it also times probes on top of SmolLM2-135M's forward pass.
"""
import json
import time

import pytest
import torch

from common import arg_parser, model, pydoc_ids, repeat, threads_from, write_result

from fusedlens.probe.accumulator import RidgeAccumulator
from fusedlens.ops.ridge_gram import default_rcond
from fusedlens.probe.solve import SiteFit

SITES, D_MODEL, TARGETS = 31, 576, 4
ALPHAS = (0.0, 1e-3, 1e-1)


def make_batches(n_batches, rows, seed=0):
    """Residual-like rows: per-dimension scales and means, correlated columns, a few large dimensions; the
    targets depend linearly on the last site, plus noise."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(D_MODEL) + torch.randn(D_MODEL, D_MODEL, generator=g) * (0.3 / D_MODEL ** 0.5)
    scale = torch.rand(SITES, 1, D_MODEL, generator=g) * 2 + 0.2
    scale[:, :, :3] *= 30
    mean = torch.randn(SITES, 1, D_MODEL, generator=g) * 2
    w = torch.randn(D_MODEL, TARGETS, generator=g) / D_MODEL ** 0.5
    out = []
    for _ in range(n_batches):
        x = (torch.randn(SITES, rows, D_MODEL, generator=g) @ mix * scale + mean).float()
        y = (x[-1] @ w + torch.randn(rows, TARGETS, generator=g) + 5).float()
        out.append((x, y))
    return out


def naive_float64(batches):
    """What one writes without fusedlens: float64 copies, full X.T @ X per site, raw (unshifted) sums."""
    xtx = torch.zeros(SITES, D_MODEL, D_MODEL, dtype=torch.float64)
    xty = torch.zeros(SITES, D_MODEL, TARGETS, dtype=torch.float64)
    sx = torch.zeros(SITES, D_MODEL, dtype=torch.float64)
    yty = torch.zeros(TARGETS, TARGETS, dtype=torch.float64)
    sy = torch.zeros(TARGETS, dtype=torch.float64)
    n = 0
    for x, y in batches:
        X, Y = x.double(), y.double()
        xtx += X.mT @ X
        xty += X.mT @ Y
        sx += X.sum(1)
        yty += Y.T @ Y
        sy += Y.sum(0)
        n += X.shape[1]
    return xtx, xty, sx, yty, sy, n


def naive_as_accumulator(sums):
    """The naive sums are an accumulator whose shift is zero: lay them out as its augmented Gram."""
    xtx, xty, sx, yty, sy, n = sums
    D = D_MODEL + TARGETS + 1
    gram = torch.zeros(SITES, D, D, dtype=torch.float64)
    gram[:, :D_MODEL, :D_MODEL] = xtx
    gram[:, :D_MODEL, D_MODEL:-1] = xty
    gram[:, :D_MODEL, -1] = sx
    gram[:, D_MODEL:-1, D_MODEL:-1] = yty
    gram[:, D_MODEL:-1, -1] = sy
    gram[:, -1, -1] = n
    return RidgeAccumulator.from_state({"gram": gram, "shift_x": torch.zeros(SITES, D_MODEL, dtype=torch.float64),
                                        "shift_y": torch.zeros(TARGETS, dtype=torch.float64),
                                        "roundoff": torch.tensor(2.0 ** -53, dtype=torch.float64)})


def fused(batches, backend="cpu"):
    acc = RidgeAccumulator(SITES, D_MODEL, TARGETS, backend=backend)
    for x, y in batches:
        acc.update(x, y)
    return acc


def r2_paths(train, held):
    """Train and held-out R² [sites, α, targets] along ALPHAS."""
    rcond = default_rcond(train.roundoff)
    tr, he = [], []
    for s in range(SITES):
        fit = SiteFit.fit(train.moments(s), rcond)
        lams = torch.tensor(ALPHAS, dtype=torch.float64) * fit.scale
        tr.append(1 - fit.train_sse(lams) / fit.train.yy)
        h = held.moments(s)
        he.append(1 - fit.sse(h, lams) / h.yy)
    return torch.stack(tr), torch.stack(he)


def accumulation(args):
    batches = make_batches(args.batches + 2, args.rows)
    batches, held_batches = batches[:-2], batches[-2:]
    naive = repeat(lambda: naive_float64(batches), args.repeats, keep=True)
    fast = repeat(lambda: fused(batches), args.repeats, keep=True)
    naive_s, fused_s = naive["seconds"], fast["seconds"]
    ref_s = repeat(lambda: fused(batches, "torch"), 1)["seconds"]
    r2_naive = r2_paths(naive_as_accumulator(naive["first"]), naive_as_accumulator(naive_float64(held_batches)))
    r2_fused = r2_paths(fast["first"], fused(held_batches))
    rows = args.batches * args.rows
    return {"sites": SITES, "d_model": D_MODEL, "targets": TARGETS, "rows": rows, "batch_rows": args.rows,
            "naive_float64_s": naive_s, "fused_cpu_s": fused_s, "torch_reference_backend_s": ref_s,
            "speedup_fused_over_naive": naive_s / fused_s,
            "fused_rows_per_s": rows / fused_s, "naive_rows_per_s": rows / naive_s,
            "syrk_gflop": SITES * rows * (D_MODEL + TARGETS + 1) ** 2 / 1e9,
            "max_abs_r2_diff_train": float((r2_naive[0] - r2_fused[0]).abs().max()),
            "max_abs_r2_diff_heldout": float((r2_naive[1] - r2_fused[1]).abs().max()), "alphas": list(ALPHAS)}


def end_to_end(windows, seq_len):
    """Forward alone vs forward + targets + accumulation on SmolLM2-135M (probe's own timing split)."""
    from fusedlens.core.capture import ResidualCapture
    from fusedlens.data.windows import windows as split_windows
    from fusedlens.probe import fit_probes

    lm = model()
    tokens = windows * seq_len
    capture = ResidualCapture(lm)
    ids = pydoc_ids(lm, tokens + 1)
    t0 = time.perf_counter()
    for w in split_windows(ids, seq_len, overlap=1):
        capture.run(w[None])
    forward_only = time.perf_counter() - t0
    out = {"tokens": tokens, "seq_len": seq_len, "forward_only_s": forward_only}
    for targets in (("logit",), ("logit", "logprob", "entropy", "loss")):
        res = fit_probes(lm, train_tokens=tokens, heldout_tokens=0, seq_len=seq_len, targets=targets, folds=2,
                    progress=False)
        t = res.meta["timing"]
        out["+".join(targets)] = {**t, "probe_over_forward": (t["targets_s"] + t["accumulate_s"]) / t["forward_s"]}
    return out


def main():
    ap = arg_parser(__doc__, "ridge_gram.json", threads=1)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--e2e-windows", type=int, default=4)
    args = ap.parse_args()
    threads_from(args)
    result = {"accumulation": accumulation(args)}
    print(json.dumps(result["accumulation"], indent=1), flush=True)
    if args.e2e_windows:
        result["end_to_end"] = end_to_end(args.e2e_windows, args.rows)
        print(json.dumps(result["end_to_end"], indent=1), flush=True)
    write_result(result, args.out)


# ---------------------------------------------------------------- pytest-benchmark mode

@pytest.fixture(scope="module")
def batches():
    return make_batches(2, 512)


@pytest.mark.benchmark(group="ridge_accumulate")
@pytest.mark.parametrize("variant", ["fused_cpu", "naive_float64", "torch_reference_backend"])
def test_ridge_accumulate(benchmark, batches, variant):
    if variant == "naive_float64":
        benchmark.pedantic(naive_float64, (batches,), rounds=3)
    else:
        benchmark.pedantic(fused, (batches,), {"backend": "cpu" if variant == "fused_cpu" else "torch"}, rounds=3)


if __name__ == "__main__":
    main()
