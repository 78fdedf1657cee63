# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SHARDS  ?= shards
RUN     ?= demo_digits_simclr

.PHONY: demo test test-fast lint slurm-deps gpu-check clean

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

## every test tier on the CPU (GPU tests skip with a reason); Slurm's daemons are installed when missing
test: $(STAMP) slurm-deps
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/ruff check .

## on a lent GPU machine (a python with torch >= 2.11 and CUDA; the project installed with --no-deps):
## the gpu-marked tests, then the loss and step benchmarks, JSON written to benchmarks/results/
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) -m pytest -q -ra -m gpu tests
	$(GPU_PY) -m benchmarks.loss
	$(GPU_PY) -m benchmarks.loss --matmul-precision high --out-dir benchmarks/results/tf32
	$(GPU_PY) -m benchmarks.step --models resnet18@96 --batch-size 256 --precision fp32,bf16 --compile off,on
	$(GPU_PY) -m benchmarks.step --models resnet50@224 --batch-size 128 --precision bf16 --compile off,on

slurm-deps:
	bash launch/slurm/install_test_slurm.sh

clean:
	rm -rf $(VENV) shards runs
