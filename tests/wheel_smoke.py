"""Smoke test of an installed fusedlens wheel, run from outside the source tree (make test-wheel).

Checks that the package imports from where the wheel put it, that the C++ kernels load and
dispatch to the CPU's ISA level, that the fused lens matches the float64 reference on
fresh random inputs at every ISA level this CPU supports, and that reports find their script.
"""
import os
import pathlib
import subprocess
import sys

import torch

import fusedlens
from fusedlens import FinalNorm, Unembed, ops
from fusedlens.core.backends import _C
from fusedlens.core.cpu import machine, supported_isas

here = pathlib.Path(fusedlens.__file__).resolve()
assert sys.prefix in str(here), f"fusedlens imported from {here}, not from the venv at {sys.prefix}"
assert _C is not None, "the wheel has no C++ extension"
print("fusedlens from", here.parent, "|", machine()["kernels"])

checks = 0
for isa in supported_isas():
    assert _C.set_isa(isa), isa
    S, T, d, V = 3, 9, 67, 1031
    hidden, targets = torch.randn(S, T, d), torch.randint(0, V, (T,))
    norm = FinalNorm("rmsnorm", torch.rand(d) + 0.5, None, 1e-5)
    unembed = Unembed(torch.randn(V, d) / d ** 0.5, torch.randn(V))
    got = ops.lens_stats(hidden, norm, unembed, targets, 5, backend="cpu")
    want = ops.reference.lens_stats(hidden, norm, unembed, targets, 5)
    for name in ("lse", "entropy", "kl_to_final", "target_logit"):
        err = (getattr(got, name).double() - getattr(want, name)).abs().max()
        assert err < 1e-4 + 1e-5 * getattr(want, name).abs().max(), (isa, name, float(err))
    print(f"  {isa}: lens_stats matches the float64 reference")
    checks += 1
_C.reset_isa()

cli = pathlib.Path(sys.prefix) / "bin" / "fusedlens"
out = subprocess.run([str(cli), "--help"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
assert out.returncode == 0 and "run" in out.stdout, out.stderr

# the reports' script and styles are package data: a page written from the wheel carries them inline
from fusedlens.report.page import ASSETS, page_html  # noqa: E402

page = page_html("smoke", [{"type": "text", "text": "x"}])
assert str(ASSETS).startswith(sys.prefix) and "document.getElementById(\"fl-data\")" in page, ASSETS
print("  report.html: script and styles from the wheel")
print(f"wheel: {checks + 2} passed, 0 failed")  # every ISA level, the entry point and a report (a failure raises)
