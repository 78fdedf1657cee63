# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SHARDS  ?= shards
RUN     ?= demo_digits_simclr

.PHONY: demo test test-fast lint bench-env system-deps gpu-check gpu-tests gpu-loss gpu-loader gpu-step clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## shard digits, pretrain SimCLR on the CPU, evaluate (kNN, label efficiency), print where the logs are
demo: $(STAMP)
	$(BIN)/python -m data_prep digits --out $(SHARDS)
	$(BIN)/python -m trainer train --config configs/demo_digits_simclr.yaml train.name=$(RUN)
	$(BIN)/python -m trainer eval label-efficiency --run runs/$(RUN)
	$(BIN)/python -m trainer eval report --run runs/$(RUN)
	@echo "TensorBoard: launch/tensorboard.sh runs   report: runs/$(RUN)/eval/report.md"

## every test tier on the CPU (GPU tests skip with a reason); the system packages the tests use (Slurm's daemons,
## shellcheck, Debian's Fashion-MNIST files) are installed when missing
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/ruff check .

## on a GPU machine (a python with torch >= 2.11 and CUDA; the project installed with --no-deps): the gpu-marked
## tests, then the loss, loader and step benchmarks (JSON to benchmarks/results/); each part also runs alone
GPU_PY   ?= python3
GPU_DATA ?= /tmp/sslscale_bench_data
gpu-check: gpu-tests gpu-loss gpu-loader gpu-step

gpu-tests:
	$(GPU_PY) -m pytest -q -ra -m gpu tests

gpu-loss:
	$(GPU_PY) -m benchmarks.loss
	$(GPU_PY) -m benchmarks.loss --matmul-precision high --out-dir benchmarks/results/tf32

gpu-loader:
	$(GPU_PY) -m benchmarks.loader_throughput --sizes 96 64 --batch 256 --workers 8 --images 20000 --batches 40

$(GPU_DATA)/shards/manifest.json:
	$(GPU_PY) -m benchmarks.synthetic_shards --out $(GPU_DATA) --images 20000

gpu-step: $(GPU_DATA)/shards/manifest.json
	$(GPU_PY) -m benchmarks.step --models resnet18@96 --batch-size 256 --precision fp32,bf16 --compile off,on \
	    --shards $(GPU_DATA)/shards --backend dali --workers 8
	$(GPU_PY) -m benchmarks.step --models resnet50@224 --batch-size 128 --precision bf16 --compile off,on
	$(GPU_PY) -m benchmarks.profile_step --shards $(GPU_DATA)/shards --backend dali --model resnet18@96 \
	    --batch-size 256 --precision bf16 --workers 8

system-deps:
	bash tests/install_system_deps.sh

## the peer environment the time-to-accuracy benchmark runs lightly's loop in, and benchmarks/step.py reads lightly
## from: lightly 1.6.0 pulls hydra-core, which downgrades omegaconf, so it never goes into .venv (benchmarks/README.md)
PEER := .venv-peer
bench-env: $(PEER)/.installed
$(PEER)/.installed: pyproject.toml
	test -x $(PEER)/bin/python || $(PY) -m venv $(PEER)
	$(PEER)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 lightly==1.6.0
	touch $@

clean:
	rm -rf $(VENV) $(PEER) shards runs
