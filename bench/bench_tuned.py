"""pytest-benchmark: one tuned-lens training step, fused linear-KL (fp32 and bf16 operands)
vs naive autograd on materialised logits vs the two GEMMs of the step's shape (the floor).

pytest bench/bench_tuned.py --benchmark-json=bench/results/tuned_cpu_pytest.json
(32 tokens to keep a run short; bench/tuned_cpu.py does fresh processes and peak memory.)
"""
import pytest

from tuned_cpu import VARIANTS, make_inputs, train_step


@pytest.mark.benchmark(group="tuned_step")
@pytest.mark.parametrize("vocab", [49152, 128256], ids=lambda v: f"vocab{v}")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tuned_step(benchmark, variant, vocab):
    hidden, lens, opt = make_inputs(32, vocab)
    benchmark.pedantic(train_step, (variant, lens, opt, hidden), rounds=2)
