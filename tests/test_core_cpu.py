"""fusedlens.cpu: the ISA level and kernel variants that `fusedlens info` and bench results report."""
import json

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
    # a build can only hold the bf16 dot path together with the AVX-512 epilogue
    assert not variants["bf16_dot"] or variants["avx512_epilogue"]
    json.dumps(m)  # JSON-able, as bench results store it


def test_info_prints_the_machine(real_lm, capsys, monkeypatch):
    monkeypatch.setattr("fusedlens.core.models.load_model", lambda *a, **k: real_lm)
    assert cli.main(["info"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["machine"]["isa"] in ("AVX512-BF16", "AVX-512", "AVX2", "NEON", "generic")
    assert set(out["machine"]["kernels"]) == {"extension", "avx512_epilogue", "bf16_dot"}
