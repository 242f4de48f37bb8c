import os, sys; sys.path.insert(0, os.path.dirname(__file__))


def pytest_benchmark_update_machine_info(config, machine_info):
    """pytest-benchmark's JSON names the ISA level and the kernel variants the build holds."""
    from fusedlens.core.cpu import machine

    machine_info["fusedlens"] = machine()
