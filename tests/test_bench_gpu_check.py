"""bench/gpu_check.py --dry: the GPU check's own code path on CPU (TRITON_INTERPRET=1, tiny sizes), in a
child process, and the JSON it writes: every section ran, correctness cases passed against float64 and
none failed, every variant was timed, and the goals were stated (as "dry": nothing here is measured)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "dry.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout


def test_every_section_ran(dry):
    data, stdout = dry
    assert data["dry"] is True and data["gpu"] == "dry-cpu"
    assert {k: v["status"] for k, v in data["sections"].items()} == dict.fromkeys(
        ("correctness", "lens", "tuned", "ridge"), "ok"), {k: v.get("error") for k, v in data["sections"].items()}
    assert "DRY RUN" in stdout and "wrote" in stdout


def test_correctness_cases_pass_against_float64(dry):
    res = dry[0]["sections"]["correctness"]["results"]
    assert res["failed"] == 0, [c for c in res["cases"] if c["status"] == "FAILED"]
    assert res["passed"] >= 3  # the time guard may skip the rest, never all
    assert res["passed"] + res["failed"] + res["skipped"] == len(res["cases"])
    assert all(isinstance(c["seed"], int) for c in res["cases"] if c["status"] == "passed")


def test_every_variant_timed(dry):
    data = dry[0]
    for sec, want in (("lens", {"triton", "naive_torch", "cublas_bf16"}), ("tuned", {"triton", "naive_torch", "floor_bf16"}),
                      ("ridge", {"triton", "torch_float64", "gemm_fp32"})):
        results = {k: v for k, v in data["sections"][sec]["results"].items() if "variants" in v}
        assert results, sec
        for key, r in results.items():
            v = r["variants"]
            assert want <= set(v), (sec, key)
            for name, x in v.items():
                assert x["status"] == "ok", (sec, key, name, x)
                assert x["ms"] > 0 and x["tflops"] > 0 and x["peak_extra_bytes"] >= 0 and len(x["all_ms"]) >= 1
        if sec == "lens":  # fp32 weights also get the tf32 and fp32 floors
            assert any({"cublas_tf32", "cublas_fp32"} <= set(r["variants"]) for r in results.values())
    assert set(data["sections"]["lens"]["results"]["memory_vs_vocab"]["extra_bytes"]) == {"128", "512"}


def test_goals_are_stated_but_not_judged(dry):
    goals = dry[0]["goals"]
    kinds = {g["goal"].split(":")[0].split(" ")[0] for g in goals}
    assert kinds == {"lens_stats", "lens_kl"}
    assert len(goals) == 3 * 2 + 1 + 3  # rate and speed-up per lens shape, memory flatness, one per tuned step
    assert all(g["verdict"] == "dry" and g["value"] is not None for g in goals)
