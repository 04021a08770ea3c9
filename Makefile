# VisTumor: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1

MODEL ?= efficientnet_lite0
DATA ?= synthetic
ARGS ?=
DEMO := outputs/demo
# Offline needs no flag: a run checks once (<= 1.5 s) whether the Hugging Face hub answers; if not
# (or with HF_HUB_OFFLINE=1, which skips the check) hub backbones (resnet50, densenet201, ...) load
# from the local HF cache, and the uncached ones fall back to random weights with a warning
# (FALLBACK=error refuses instead). W&B without an API key runs offline and opens no outside connection.
FALLBACK ?= random

.DEFAULT_GOAL := help
.PHONY: help install demo demo-seg demo-mil data tile train sweep explain infer evaluate test test-slow lint bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with torch and the package (+ dev tools)

demo: $(STAMP) ## The main job on the embedded default: generate, tile, train, explain, compare
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO)/train $(ARGS)
	$(PY) explain.py tiling=demo ckpt_path=$(DEMO)/train/checkpoints/last.ckpt hydra.run.dir=$(DEMO)/explain
	$(PY) infer.py ckpt_path=$(DEMO)/train/checkpoints/last.ckpt data=synthetic_test slides=all hydra.run.dir=$(DEMO)/infer
	$(PY) -m vistumor.compare $(DEMO)
	@echo "demo outputs: $(DEMO)/train (metrics, curves, cam/), $(DEMO)/explain, $(DEMO)/infer (heatmaps, lesions, evaluation), $(DEMO)/comparison.md"

demo-seg: $(STAMP) ## After make demo: the U-Net variant on the same patches and test slides, in the same table
	$(PY) train.py experiment=demo model=seg_lite0 callbacks=default hydra.run.dir=$(DEMO)/seg/train $(ARGS)
	$(PY) infer.py ckpt_path=$(DEMO)/seg/train/checkpoints/last.ckpt data=synthetic_test slides=all lesions.source=mask hydra.run.dir=$(DEMO)/seg/infer_mask
	$(PY) infer.py ckpt_path=$(DEMO)/seg/train/checkpoints/last.ckpt data=synthetic_test slides=all hydra.run.dir=$(DEMO)/seg/infer_heatmap
	$(PY) -m vistumor.compare $(DEMO)

MIL := outputs/demo-mil
demo-mil: $(STAMP) ## Slide labels only: 40 small synthetic slides -> bags (Lite0) -> ABMIL -> held-out slides -> compare
	$(PY) train.py experiment=mil hydra.run.dir=$(MIL)/train $(ARGS)
	$(PY) -m vistumor.compare $(MIL)
	@echo "demo-mil outputs: $(MIL)/train (metrics, split.csv, slides/: attention heatmaps, lesions, evaluation), $(MIL)/comparison.md"

data: $(STAMP) ## Generate the synthetic CAMELYON16-like dataset into data/synthetic (as conf/data/synthetic.yaml)
	$(PY) -m vistumor.synthetic --root data/synthetic --workers 2 $(ARGS)

tile: $(STAMP) ## Tile slides into a manifest (DATA=synthetic|camelyon16, ARGS=overrides)
	$(PY) tiling.py data=$(DATA) $(ARGS)

train: $(STAMP) ## Train one model (MODEL=efficientnet_lite0|resnet50|densenet201|efficientnet_b7|small_cnn, DATA=...); works offline
	$(PY) train.py model=$(MODEL) data=$(DATA) model.weights_fallback=$(FALLBACK) $(ARGS)

sweep: $(STAMP) ## The paper's three backbones as a Hydra multirun + comparison table; offline: cached or random weights
	$(PY) train.py -m hparams_search=architectures data=$(DATA) model.weights_fallback=$(FALLBACK) $(ARGS)

explain: $(STAMP) ## Explain checkpoints: make explain ARGS="ckpt_path=..."
	$(PY) explain.py data=$(DATA) $(ARGS)

CKPT ?= $(DEMO)/train/checkpoints/last.ckpt
SLIDES ?= test
infer: $(STAMP) ## Whole-slide heatmaps, Grad-CAM++, lesions, evaluation (CKPT=..., SLIDES=test|all|folder, DATA=...)
	$(PY) infer.py ckpt_path=$(CKPT) slides=$(SLIDES) data=$(DATA) $(ARGS)

evaluate: $(STAMP) ## CAMELYON16 slide AUC + lesion FROC of any tool's CSVs: make evaluate ARGS="--predictions D --annotations D --reference F"
	$(PY) -m vistumor.evaluate $(ARGS)

test: $(STAMP) ## Run the test suite (not slow, not gpu); offline, W&B disabled
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP) ## Run the slow tests only
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -m "slow" $(ARGS)

lint: $(STAMP) ## Ruff
	$(VENV)/bin/ruff check vistumor tests bench *.py

bench: $(STAMP) ## Benchmarks on this machine (see bench/README.md)
	$(PY) bench/bench_tiling.py $(ARGS)
	$(PY) bench/bench_loader.py
	$(PY) bench/bench_models.py
	$(PY) bench/bench_feature_cache.py

.PHONY: view
RUN ?= $(DEMO)/infer
view: $(STAMP) ## Open an inference run in the browser: make view RUN=outputs/demo/infer (http://127.0.0.1:8000/)
	$(PY) -m vistumor.viewer $(RUN) $(ARGS)

clean: ## Remove generated data and outputs (keeps .venv)
	rm -rf outputs data/synthetic
