# mpic — make targets. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MPIC := $(VENV)/bin/mpic
PROFILE ?= demo
ARGS ?=
# Debian packages: audio I/O, the FluidSynth renderer, the sample libraries (FluidR3 GM/GS, csound GM, OPL3 FM), headless Chromium (browser tests)
APT_PACKAGES := libsndfile1 libfluidsynth3 fluid-soundfont-gm fluid-soundfont-gs csound-soundfont opl3-soundfont chromium
# Pretrained weights that ship inside PyPI packages, downloaded (not installed) once; ml/pretrained/ reads them
WHEELS_DIR := .cache/mpic/wheels
MUSICNN_WHEEL := $(WHEELS_DIR)/musicnn-0.1.0-py3-none-any.whl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup system-deps pretrained test test-live test-fast lint format run data train fuse evaluate serve mlflow bench gpu-check clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

system-deps: ## install the Debian packages the project needs (skips what is there)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	else echo "system packages present"; fi

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install --no-compile -e '.[dev]'
	@# byte-compile on every core: pip compiles one file at a time (138 s -> 60 + 45 s on 2 cores). Files
	@# written for newer Pythons (torch's py312 samples) fail to compile here, as they do under pip.
	-@$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1
	@touch $@

# musicnn's wheel pins numpy<1.17 and TensorFlow, so it is only downloaded: its TF checkpoints are read directly
$(MUSICNN_WHEEL): | $(VENV)/.installed
	$(PY) -m pip download -q --no-deps musicnn==0.1.0 -d $(WHEELS_DIR)

pretrained: $(MUSICNN_WHEEL) ## download pretrained weights from PyPI (the musicnn wheel, 29 MB) once

setup: system-deps $(VENV)/.installed pretrained ## a .venv with the project (editable) and dev tools, Debian packages, pretrained weights

test: setup ## run the whole test suite
	$(PY) -m pytest -q

test-live: setup ## opt-in: `ray start --head` + `ray job submit` of train and fuse, token auth (~10 min on 2 cores)
	MPIC_LIVE_TESTS=1 $(PY) -m pytest -q -m live

test-fast: ## tests without Ray, Serve or the browser (seconds)
	$(PY) -m pytest -q tests/ml

lint: ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check ml serve ray_jobs bench mpic
	$(VENV)/bin/mypy ml serve ray_jobs bench mpic

format: ## apply ruff's formatting and fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format ml serve ray_jobs bench mpic tests

data: setup ## render the demo data set (once)
	@if [ -d "$$($(PY) -c 'from ml.config import load_config; print(load_config(profile="$(PROFILE)").data.root)')/IRMAS-TrainingData" ]; then \
	  echo "demo data present"; else $(MPIC) synth --profile $(PROFILE); fi

train: setup ## train the ensemble on a local Ray (or ray.address)
	$(MPIC) train --profile $(PROFILE) $(ARGS)

fuse: setup ## search fusion weights and thresholds on out-of-fold predictions
	$(MPIC) fuse --profile $(PROFILE) $(ARGS)

evaluate: setup ## evaluate members and the ensemble on the test excerpts
	$(MPIC) evaluate --profile $(PROFILE) $(ARGS)

serve: setup ## serve the ensemble: API + web page on http://127.0.0.1:8080
	$(MPIC) serve --profile $(PROFILE) $(ARGS)

run: setup data train fuse ## install, build demo data, train, fuse and serve (the newcomer's command)
	$(MPIC) evaluate --profile $(PROFILE)
	$(MPIC) serve --profile $(PROFILE)

bench: setup ## benchmarks → bench/results/*.json + docs/benchmarks.md (~30 min on 2 cores; ARGS=--quick: ~5)
	$(PY) -m bench $(ARGS)

GPU_CHECK_OUT ?= bench/results/gpu-check
gpu-check: ## on a CUDA host: GPU training trials, GPU Serve replicas, quick inference bench (~5 min) → $(GPU_CHECK_OUT)
	$(PY) -m bench --gpu-check --out $(GPU_CHECK_OUT) $(ARGS)

mlflow: setup ## MLflow UI on http://127.0.0.1:5000 (SQL store)
	$(MPIC) mlflow --profile $(PROFILE)

clean: ## remove caches, runs and demo data (keeps .venv)
	rm -rf .cache data/demo test-artifacts .pytest_cache .mypy_cache .ruff_cache

# ---- beyond one machine (docs/deploy.md) ---------------------------------------------------------------
IMAGE ?= mpic
RAY_IMAGE_TAG ?= $(shell sed -n 's/^ARG RAY_IMAGE_TAG=//p' Dockerfile)

.PHONY: image kuberay cluster-up cluster-down test-deploy

image: ## build mpic:<ray>-py311 and mpic:<ray>-py311-gpu (needs a Docker daemon)
	@docker info >/dev/null 2>&1 || { echo "make image: no running Docker daemon here"; exit 1; }
	docker build -t $(IMAGE):$(RAY_IMAGE_TAG) .
	docker build --build-arg RAY_IMAGE_TAG=$(RAY_IMAGE_TAG)-gpu --build-arg TORCH_INDEX_URL= \
	  -t $(IMAGE):$(RAY_IMAGE_TAG)-gpu .

kuberay: setup ## regenerate deploy/kuberay/rayservice.yaml from serve/config.yaml
	$(PY) deploy/kuberay/gen_rayservice.py

cluster-up: setup ## start the AWS Ray cluster of cluster.yaml (read docs/deploy.md first)
	$(VENV)/bin/ray up cluster.yaml

cluster-down: setup ## terminate the AWS Ray cluster of cluster.yaml
	$(VENV)/bin/ray down cluster.yaml

test-deploy: setup ## cluster.yaml / KubeRay / Dockerfile checks and the multi-node tests (~3-4 min)
	$(PY) -m pytest -q tests/deploy
