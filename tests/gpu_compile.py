"""Offline compilation of a Triton kernel to an sm_90 cubin with triton's own ptxas (no GPU needed):
the shared runner of the kernel tests' compile checks."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest


def compile_offline(script: str, args: list[str], tmp_path) -> None:
    """Run `script` (which prints "compiled") in a child without the interpreter; skip without ptxas."""
    nvidia = pathlib.Path(importlib.util.find_spec("triton").origin).parent / "backends" / "nvidia" / "bin"
    if not any(nvidia.glob("ptxas*")):
        pytest.skip("triton's bundled ptxas is not here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    package = pathlib.Path(importlib.util.find_spec("fusedlens").origin).parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package), env.get("PYTHONPATH")]))
    res = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]
