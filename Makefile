# VisTumor: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

MODEL ?= small_cnn
DATA ?= synthetic
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo data tile train sweep explain test test-slow lint bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with torch and the package (+ dev tools)

demo: $(STAMP) ## The main job on the embedded synthetic dataset: generate, tile
	$(PY) tiling.py data=$(DATA) $(ARGS)

data: $(STAMP) ## Generate the synthetic CAMELYON16-like dataset into data/synthetic
	$(PY) -m vistumor.synthetic --root data/synthetic $(ARGS)

tile: $(STAMP) ## Tile slides into a manifest (DATA=synthetic|camelyon16, ARGS=overrides)
	$(PY) tiling.py data=$(DATA) $(ARGS)

test: $(STAMP) ## Run the test suite (not slow, not gpu)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP) ## Run the slow tests too
	$(PY) -m pytest -q -m "slow" $(ARGS)

lint: $(STAMP) ## Ruff
	$(VENV)/bin/ruff check vistumor tests bench *.py

bench: $(STAMP) ## Benchmarks (see bench/README.md)
	$(PY) bench/bench_tiling.py $(ARGS)

clean: ## Remove generated data and outputs (keeps .venv)
	rm -rf outputs data/synthetic
