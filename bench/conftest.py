"""pytest-benchmark mode of the bench scripts (pytest bench/<op>.py --benchmark-json=bench/results/<op>_pytest.json):
bench/ importable, and the JSON names the machine as every other result does."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def pytest_benchmark_update_machine_info(config, machine_info):
    """pytest-benchmark's JSON names the ISA level and the kernel variants the build holds."""
    from common import machine_info as ours

    machine_info["fusedlens"] = ours()
