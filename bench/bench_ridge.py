"""pytest-benchmark: ridge accumulation, fused fp32 syrk (cpu backend) vs the naive float64 X.T @ X, same batches.

pytest bench/bench_ridge.py --benchmark-json=bench/results/ridge_cpu_pytest.json
(two 512-row batches of 31 sites x 576; bench/ridge_cpu.py does more batches, the R² check and the end-to-end cost.)
"""
import pytest

from ridge_cpu import fused, make_batches, naive_float64


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
