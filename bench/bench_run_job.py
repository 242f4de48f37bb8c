"""pytest-benchmark: the whole `fusedlens run` job vs the naive output_hidden_states job vs its floor.

pytest bench/bench_run_job.py --benchmark-json=bench/results/run_job_pytest.json
(256 tokens of pydoc on the embedded SmolLM2-135M; bench/run_job.py does longer runs.)
"""
import pytest

from run_job import JOBS

TOKENS, SEQ_LEN = 256, 128


@pytest.fixture(scope="module")
def lm():
    from fusedlens.core.models import load_model

    return load_model()


@pytest.mark.benchmark(group="run_job")
@pytest.mark.parametrize("job", list(JOBS))
def test_run_job(benchmark, lm, job):
    benchmark.pedantic(JOBS[job], (TOKENS, SEQ_LEN, lm), rounds=2, warmup_rounds=1)
