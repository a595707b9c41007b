# lmforge — two commands: `make demo` and `make test`. Both bootstrap .venv from nothing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# CPU wheel when no NVIDIA GPU is visible; the default (CUDA) build otherwise.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: browser venv demo demo-seeds test test-all lint format bench gpu-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(HAS_GPU),1)
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" || $(BIN)/python -m pip install --quiet torch
	$(BIN)/python -m pip install --quiet -e ".[dev,serve,data,align,gpu]" || $(BIN)/python -m pip install --quiet -e ".[dev,serve,data,align]"
else
	# CPU: the local wheel (torch==X+cpu) when the machine has one, else PyTorch's CPU index.
	$(BIN)/python -c "import torch" 2>/dev/null || \
	  $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	  $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install --quiet -e ".[dev,serve,data,align]"
endif
	touch $(STAMP)

# The web chat page is tested in headless Chromium (Debian's package). Installed when we can
# (root + apt); without it that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) ; } || \
	  echo "note: chromium not installed; the web chat page test will be skipped"

demo: $(STAMP)
	$(BIN)/python -m lmforge demo

# The demo's robustness check: three seeds, each reported, and their mean.
demo-seeds: $(STAMP)
	$(BIN)/python -m lmforge demo --seeds 0,1,2 --jobs 2 --out runs/demo-seeds

# Test files are spread over one process per logical CPU, at most TEST_WORKERS (pytest-xdist;
# every test runs single-threaded, tests/conftest.py), an idle process taking tests from a busy
# one (--dist worksteal: 355–380 s of tests here against 398 s a file per process); TEST_WORKERS=0: one process.
TEST_WORKERS ?= 4
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -x --timeout=600 $(if $(filter 0,$(TEST_WORKERS)),,-n logical --maxprocesses=$(TEST_WORKERS) --dist worksteal)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check lmforge tests bench
	$(BIN)/ruff format --check lmforge tests bench

format: $(STAMP)
	$(BIN)/ruff format lmforge tests bench
	$(BIN)/ruff check --fix lmforge tests bench

# Every side-by-side benchmark (tens of minutes on a CPU); each ends with a RESULT line.
BENCHES := model_throughput sft_throughput checkpointing_memory generate structured \
           peft_memory dpo_step grpo_step multi_lora mla_cache \
           fp8_training moe_balance image_generation data_memory foundations \
           scaling_laws hallucination flash_attention self_speculative \
           image_generation_2 vlm_tasks vs_llamacpp gui_agent engine_overhead \
           flash_attention_gpu flash_attention_tune

bench: $(STAMP)
	set -e; for b in $(BENCHES); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py; done

# On a machine with a CUDA GPU: the GPU-only checks and the engine vs vLLM (under 8 minutes).
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
