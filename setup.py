"""Build fusedlens: the Python package, the Triton kernels and the C++ extension fusedlens._C.

Built against the torch already installed (pip install --no-build-isolation .).
"""
import glob
import os

from setuptools import find_packages, setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as err:  # pragma: no cover - only hit without torch
    raise SystemExit("fusedlens builds against an installed torch: pip install torch first, "
                     "then pip install --no-build-isolation .") from err

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob("csrc/core/*.cpp") + glob.glob("csrc/core/isa/*.cpp") + glob.glob("csrc/torch/*.cpp"))
# No -march: the build runs on any x86-64. The hot loops are compiled once per ISA level in
# csrc/core/isa/ (each file carries its own target pragma) and chosen at run time.
# -ffp-contract=off: no a*b+c fused behind our back, so a statistic does not depend on which code path
# (with or without token sets, say) the compiler contracted; every FMA is an explicit intrinsic.
cxx_flags = ["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=off"]

setup(
    name="fusedlens",
    version="0.2.0",
    description="Compiled mechanistic-interpretability engine: fused logit/tuned lens and streaming probes",
    python_requires=">=3.10",
    package_dir={"fusedlens": "python/fusedlens", "fusedlens.kernels": "kernels"},
    packages=find_packages("python") + ["fusedlens.kernels"],
    package_data={"fusedlens.report": ["assets/*.js", "assets/*.css"]},  # the reports' inline script and styles
    ext_modules=[CppExtension("fusedlens._C", sources, extra_compile_args=cxx_flags,
                              extra_link_args=["-fopenmp"])],
    cmdclass={"build_ext": BuildExtension},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "transformers>=4.46",
        "gguf>=0.10",
        "accelerate",
        "matplotlib",
        "tqdm",
        "pyarrow",
    ],
    extras_require={"triton": ["triton>=3.0"], "test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["fusedlens=fusedlens.cli:main"]},
)
