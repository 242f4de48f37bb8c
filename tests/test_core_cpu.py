"""fusedlens.cpu: the ISA level and kernel variants that `fusedlens info` and bench results report."""
import json
import os
import subprocess
import sys

from fusedlens import cli
from fusedlens.core.cpu import build_variants, isa_level, machine


def test_isa_levels_from_flags():
    assert isa_level({"avx2", "fma", "avx512f", "avx512_bf16"}) == "AVX512-BF16"
    assert isa_level({"avx2", "fma", "avx512f"}) == "AVX-512"
    assert isa_level({"avx2", "fma"}) == "AVX2"
    assert isa_level({"avx2"}) in ("generic", "NEON")  # AVX2 without FMA is not the AVX2 level
    assert isa_level({"sse2"}) in ("generic", "NEON")


def test_machine_names_this_cpu_and_the_build():
    m = machine()
    flags = set()
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    assert m["isa"] == isa_level(flags)
    variants = build_variants()
    assert variants["extension"] is True
    # the best level the CPU offers runs (unless forced), and it matches the CPU's flags
    want = {"AVX512-BF16": "avx512bf16", "AVX-512": "avx512", "AVX2": "avx2"}.get(m["isa"], "generic")
    assert variants["cpu_isa"] == want
    if not os.environ.get("FUSEDLENS_ISA"):
        assert variants["isa"] == want
    # bf16 dot: only on the avx512bf16 level, and there when forced or measured faster than fp32 FMA
    forced = os.environ.get("FUSEDLENS_ISA") == "avx512bf16"
    assert variants["bf16_dot"] == (variants["isa"] == "avx512bf16" and (forced or variants["bf16_dot_speedup"] > 1.25))
    assert (variants["bf16_dot_speedup"] > 0) == (variants["cpu_isa"] == "avx512bf16")
    assert variants["avx512_epilogue"] == variants["isa"].startswith("avx512")
    json.dumps(m)  # JSON-able, as bench results store it


def test_bf16_dot_is_chosen_by_measurement_unless_forced():
    from fusedlens.core.backends import _C

    if _C.cpu_isa() != "avx512bf16":  # the level cannot be forced, and nothing uses bf16 dot
        assert not _C.set_isa("avx512bf16") and not _C.has_bf16_dot() and _C.bf16_dot_speedup() == 0
        return
    try:
        assert _C.set_isa("avx512bf16") and _C.has_bf16_dot()  # forced: the instructions run
        _C.reset_isa()
        assert _C.has_bf16_dot() == (os.environ.get("FUSEDLENS_ISA") == "avx512bf16" or _C.bf16_dot_speedup() > 1.25)
        assert _C.set_isa("avx512") and not _C.has_bf16_dot()
    finally:
        _C.reset_isa()


def test_info_prints_the_machine(real_lm, capsys, monkeypatch):
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    assert cli.main(["info"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"]["isa"] in ("AVX512-BF16", "AVX-512", "AVX2", "NEON", "generic")
    assert set(out["machine"]["kernels"]) >= {"extension", "isa", "cpu_isa", "avx512_epilogue", "bf16_dot"}


def test_forced_isa_runs_and_bad_values_are_import_errors():
    from fusedlens.core.cpu import supported_isas

    for isa in supported_isas():
        out = subprocess.run([sys.executable, "-c", "from fusedlens.core.backends import _C; print(_C.isa())"],
                             env={**os.environ, "FUSEDLENS_ISA": isa}, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == isa, out.stderr
    for bad, msg in (("avx9", "expected one of generic"), ("sse", "expected one of")):
        out = subprocess.run([sys.executable, "-c", "import fusedlens"], env={**os.environ, "FUSEDLENS_ISA": bad},
                             capture_output=True, text=True)
        assert out.returncode != 0 and msg in out.stderr
