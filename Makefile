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
# evaluate: the source is EVAL_URL (a live server), EVAL_VERSION (an exported version folder), CKPT, or RUN (default: the newest run)
REAL ?=
COUNT ?=
EVAL_VERSION ?=
EVAL_URL ?=
INCEPTION ?=  # pt_inception-2015-12-05-6726825d.pth: FID/KID are reported unavailable without it
EVAL_ARGS ?=
# ablation (DATA, PRESET, EPOCHS, OUT as for train)
METRICS_DATA ?=
ABLATION_ARGS ?=
NPROC ?=  # data-parallel processes (torchrun): NCCL with one GPU each, gloo on CPU
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
CACHE_MIB ?=       # response cache size (the launcher's default: 256; 0 = off)
POLL_SECONDS ?=    # how often Triton looks for new exported versions (default 5; 0 = restart needed)
SERVE_ARGS ?=
SOAK_SECONDS ?= 300
SOAK_CONCURRENCY ?= 16
REPLICAS ?= 1
comma := ,
# One gRPC endpoint per replica (replica i listens on every base port + 3i): clients spread over them.
URL ?= $(shell seq -s, -f 'localhost:%.0f' $(GRPC_PORT) 3 $$(( $(GRPC_PORT) + 3 * ($(REPLICAS) - 1) )))
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
GPU_CHECK_ARGS ?=

VERSION ?= $(shell ls -d $(MODEL_REPOSITORY)/bamsgan/[0-9]* 2>/dev/null | xargs -rn1 basename | sort -n | tail -1)

.PHONY: setup setup-gpu train export serve ensemble generate bench perf-analyzer demo test data bench-attention bench-training bench-export gpu-check soak evaluate ablation clean-venv

setup: $(SETUP_STAMP)
$(SETUP_STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	@# After `make setup-gpu`, keep onnxruntime-gpu: the CPU onnxruntime package clashes with it.
	if [ -f $(VENV)/.gpu ]; then $(PY) -m pip uninstall -y onnxruntime && $(PY) -m pip install --force-reinstall -r requirements-gpu.txt; fi
	touch $@

setup-gpu: setup  ## extras for a CUDA host: onnxruntime-gpu (replaces onnxruntime), tensorrt
	$(PY) -m pip uninstall -y onnxruntime
	$(PY) -m pip install -r requirements-gpu.txt
	touch $(VENV)/.gpu

train: setup
	$(if $(NPROC),$(PY) -m training.distributed --standalone --nproc-per-node $(NPROC),$(PY)) -m training.train --data "$(DATA)" --preset $(PRESET) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(OUT),--out "$(OUT)") $(TRAIN_ARGS)

export: setup
	$(PY) -m export $(if $(RUN),--run "$(RUN)") $(if $(CKPT),--ckpt "$(CKPT)") $(if $(TRT),--trt) --repository $(MODEL_REPOSITORY)

serve: setup  ## a repository without a bamsgan version gets the released generator (export/released/) first
	$(PY) -m export.release --publish-if-empty --repository $(MODEL_REPOSITORY)
	$(PY) -m $(if $(filter 1,$(REPLICAS)),serving,serving.replicas --replicas $(REPLICAS)) --model-repository $(MODEL_REPOSITORY) --address $(ADDRESS) \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
		$(if $(strip $(CACHE_MIB)),--cache-mib $(CACHE_MIB)) $(if $(strip $(POLL_SECONDS)),--poll-seconds $(POLL_SECONDS)) $(SERVE_ARGS)

soak: setup  ## SOAK_SECONDS at SOAK_CONCURRENCY against its own server; bytes checked per seed; SIGKILL + restart midway
	$(PY) -m clients.soak --model-repository $(MODEL_REPOSITORY) --seconds $(SOAK_SECONDS) --concurrency $(SOAK_CONCURRENCY) --out $(BENCH_OUT)/soak

ensemble: setup  ## the full-Triton ensemble repository (native onnxruntime backend) from a published version
	@test -n "$(VERSION)" || { echo "error: no exported version in $(MODEL_REPOSITORY)/bamsgan; run make export first" >&2; exit 2; }
	$(PY) -m serving.ensemble --from $(MODEL_REPOSITORY)/bamsgan/$(VERSION)

generate: setup
	$(PY) -m clients.generate --url $(URL) --seeds "$(SEEDS)" --out $(GRID) --each $(FACES) $(if $(TRUNCATION),--truncation $(TRUNCATION))

bench: setup
	$(PY) -m clients.benchmark --url $(URL) --out $(BENCH_OUT) --batch-sizes $(BATCH_SIZES) --concurrency $(CONCURRENCY) \
		$(if $(RATES),--rate $(RATES)) --window $(WINDOW) --min-requests $(MIN_REQUESTS) --max-windows $(MAX_WINDOWS) --compare-raw $(MODEL_REPOSITORY) $(BENCH_ARGS)

perf-analyzer: setup
	$(PY) -m clients.perf_analyzer --url $(firstword $(subst $(comma), ,$(URL))) --out $(BENCH_OUT)/perf_analyzer --batch-sizes $(BATCH_SIZES) \
		--concurrency $(CONCURRENCY) --min-requests $(MIN_REQUESTS) --max-windows $(MAX_WINDOWS) \
		$(if $(PAIRS),--pairs $(PAIRS),$(if $(wildcard $(BENCH_OUT)/results.json),--ours $(BENCH_OUT)/results.json)) $(BENCH_ARGS)

demo: setup
	$(PY) -m clients.demo --data "$(DATA)" $(if $(EPOCHS),--epochs $(EPOCHS))

evaluate: setup  ## face-quality metrics (SWD, sharpness, diversity, detector; FID/KID with the Inception weights) -> JSON
	$(PY) -m training.evaluate $(if $(EVAL_URL),--url $(EVAL_URL),$(if $(EVAL_VERSION),--version $(EVAL_VERSION),$(if $(CKPT),--checkpoint $(CKPT),--run "$(or $(RUN),$(shell ls -td runs/*/ 2>/dev/null | head -1),runs/<none: run make train first>)"))) \
		$(if $(REAL),--real "$(REAL)") $(if $(COUNT),--count $(COUNT)) $(if $(strip $(INCEPTION)),--inception-weights "$(INCEPTION)") $(EVAL_ARGS)

ablation: setup  ## every ablation variant on the same data, seed and budget: table, plots, grid in the study folder
	$(PY) -m training.ablation --data "$(DATA)" --preset $(PRESET) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(OUT),--out "$(OUT)") \
		$(if $(METRICS_DATA),--metrics-data "$(METRICS_DATA)") $(ABLATION_ARGS)

test: setup
	$(PY) -m pytest

data: setup
	$(PY) -m training.download --what all

bench-attention: setup
	$(PY) -m training.bench_attention

bench-training: setup
	$(PY) -m training.bench_training

bench-export: setup
	$(PY) -m export.benchmark

gpu-check: setup  ## on a CUDA host: every GPU path checked and timed (out/gpu-check-<time>/report.json); no GPU: exit 2
	$(PY) -m clients.gpu_check $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
