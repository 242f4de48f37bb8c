"""Target-logit gather-dot: fused C++ kernel vs naive PyTorch (gather rows, multiply, sum).

pytest bench/bench_target_logit.py --benchmark-json=bench/results/target_logit_cpu.json
The floor for this op is reading the gathered rows; there is no GEMM to compare.
"""
import pytest
import torch

from fusedlens import ops

ROWS, D, VOCAB = 31 * 2048, 576, 49152


@pytest.fixture(scope="module")
def inputs():
    x = torch.randn(ROWS, D)
    w = torch.randn(VOCAB, D)
    ids = torch.randint(0, VOCAB, (ROWS,))
    return x, w, ids


@pytest.mark.benchmark(group="target_logit")
@pytest.mark.parametrize("variant", ["fused_cpu", "naive_torch"])
def test_target_logit(benchmark, inputs, variant):
    x, w, ids = inputs
    if variant == "fused_cpu":
        benchmark(lambda: ops.target_logit(x, w, ids, backend="cpu"))
    else:
        benchmark(lambda: (x * w[ids]).sum(-1))
