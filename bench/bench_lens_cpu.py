"""pytest-benchmark: fused lens_stats vs naive PyTorch vs the bare GEMM, same inputs, one run.

pytest bench/bench_lens_cpu.py --benchmark-json=bench/results/lens_cpu_pytest.json
(256 tokens to keep a run short; bench/lens_cpu.py does the full shapes and memory.)
"""
import pytest

from lens_cpu import bare_gemm, make_inputs, naive
from fusedlens import ops


@pytest.fixture(scope="module", params=[49152, 128256], ids=lambda v: f"vocab{v}")
def inputs(request):
    return make_inputs(256, request.param)


@pytest.mark.benchmark(group="lens_stats")
@pytest.mark.parametrize("variant", ["fused_cpu", "fused_cpu_bf16", "naive_torch", "bare_gemm"])
def test_lens_stats(benchmark, inputs, variant):
    hidden, norm, unembed, targets = inputs
    if variant.startswith("fused_cpu"):
        if variant.endswith("bf16"):
            unembed = type(unembed)(unembed.weight.bfloat16())
        benchmark.pedantic(ops.lens_stats, (hidden, norm, unembed, targets, 5), {"backend": "cpu"}, rounds=2)
    elif variant == "naive_torch":
        benchmark.pedantic(naive, (hidden, norm, unembed, targets), rounds=2)
    else:
        benchmark.pedantic(bare_gemm, (norm(hidden), unembed.weight), rounds=2)
