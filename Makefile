# BaMSGAN: train -> export -> serve with Triton -> request faces / benchmark.
# Every target runs inside .venv, which `make setup` builds from requirements.txt.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.installed

# train
DATA ?= synthetic
PRESET ?= cpu
EPOCHS ?=
OUT ?=
TRAIN_ARGS ?=
# export (RUN defaults to the newest run under runs/)
RUN ?=
CKPT ?=
TRT ?=
# serve / clients
MODEL_REPOSITORY ?= model_repository
ADDRESS ?= 127.0.0.1
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
URL ?= localhost:$(GRPC_PORT)
SEEDS ?= 0-63
TRUNCATION ?=
GRID ?= out/grid.png
FACES ?= out/faces
BENCH_OUT ?= out/bench
BATCH_SIZES ?= 1,16,64,256
CONCURRENCY ?= 1,4,16
RATES ?=
WINDOW ?= 3
MIN_REQUESTS ?= 50
PAIRS ?=
MAX_WINDOWS ?= 6
BENCH_ARGS ?=

VERSION ?= $(shell ls -d $(MODEL_REPOSITORY)/bamsgan/[0-9]* 2>/dev/null | xargs -rn1 basename | sort -n | tail -1)

.PHONY: setup setup-gpu train export serve ensemble generate bench perf-analyzer demo test data bench-attention bench-training bench-export clean-venv

setup: $(SETUP_STAMP)
$(SETUP_STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -r requirements.txt
	@# After `make setup-gpu`, keep onnxruntime-gpu: the CPU onnxruntime package clashes with it.
	if [ -f $(VENV)/.gpu ]; then $(PY) -m pip uninstall -y onnxruntime && $(PY) -m pip install --force-reinstall -r requirements-gpu.txt; fi
	touch $@

setup-gpu: setup  ## extras for a CUDA host: onnxruntime-gpu (replaces onnxruntime), tensorrt
	$(PY) -m pip uninstall -y onnxruntime
	$(PY) -m pip install -r requirements-gpu.txt
	touch $(VENV)/.gpu

train: setup
	$(PY) -m training.train --data "$(DATA)" --preset $(PRESET) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(OUT),--out "$(OUT)") $(TRAIN_ARGS)

export: setup
	$(PY) -m export $(if $(RUN),--run "$(RUN)") $(if $(CKPT),--ckpt "$(CKPT)") $(if $(TRT),--trt) --repository $(MODEL_REPOSITORY)

serve: setup
	$(PY) -m serving --model-repository $(MODEL_REPOSITORY) --address $(ADDRESS) \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

ensemble: setup  ## the full-Triton ensemble repository (native onnxruntime backend) from a published version
	@test -n "$(VERSION)" || { echo "error: no exported version in $(MODEL_REPOSITORY)/bamsgan; run make export first" >&2; exit 2; }
	$(PY) -m serving.ensemble --from $(MODEL_REPOSITORY)/bamsgan/$(VERSION)

generate: setup
	$(PY) -m clients.generate --url $(URL) --seeds "$(SEEDS)" --out $(GRID) --each $(FACES) $(if $(TRUNCATION),--truncation $(TRUNCATION))

bench: setup
	$(PY) -m clients.benchmark --url $(URL) --out $(BENCH_OUT) --batch-sizes $(BATCH_SIZES) --concurrency $(CONCURRENCY) \
		$(if $(RATES),--rate $(RATES)) --window $(WINDOW) --min-requests $(MIN_REQUESTS) --max-windows $(MAX_WINDOWS) --compare-raw $(MODEL_REPOSITORY) $(BENCH_ARGS)

perf-analyzer: setup
	$(PY) -m clients.perf_analyzer --url $(URL) --out $(BENCH_OUT)/perf_analyzer --batch-sizes $(BATCH_SIZES) \
		--concurrency $(CONCURRENCY) --min-requests $(MIN_REQUESTS) --max-windows $(MAX_WINDOWS) \
		$(if $(PAIRS),--pairs $(PAIRS),$(if $(wildcard $(BENCH_OUT)/results.json),--ours $(BENCH_OUT)/results.json)) $(BENCH_ARGS)

demo: setup
	$(PY) -m clients.demo --data "$(DATA)" $(if $(EPOCHS),--epochs $(EPOCHS))

test: setup
	$(PY) -m pytest

data: setup
	$(PY) -m training.download

bench-attention: setup
	$(PY) -m training.bench_attention

bench-training: setup
	$(PY) -m training.bench_training

bench-export: setup
	$(PY) -m export.benchmark

clean-venv:
	rm -rf $(VENV)
