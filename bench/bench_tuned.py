"""pytest-benchmark: one tuned-lens training step, fused linear-KL vs naive autograd on materialised logits.

pytest bench/bench_tuned.py --benchmark-json=bench/results/tuned_cpu_pytest.json
(32 tokens to keep a run short; bench/tuned_cpu.py does fresh processes and peak memory.)
"""
import pytest

from tuned_cpu import LOSSES, make_inputs, train_step


@pytest.mark.benchmark(group="tuned_step")
@pytest.mark.parametrize("vocab", [49152, 128256], ids=lambda v: f"vocab{v}")
@pytest.mark.parametrize("variant", list(LOSSES))
def test_tuned_step(benchmark, variant, vocab):
    hidden, lens, opt = make_inputs(32, vocab)
    benchmark.pedantic(train_step, (variant, lens, opt, hidden), rounds=2)
