# The two commands of the README: `make book` and `make test`. `make help` lists all.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PROFILE ?= quick
DATASET ?= phantom
PUBLISH_FACES ?= 0
PYTEST_ARGS ?=
# where the per-subject loops run (refacelib._utils.parallel): loky (this machine) or dask
# (a dask.distributed cluster: the scheduler at SCHEDULER, or a LocalCluster); no cache key changes
BACKEND ?= $(or $(REFACE_BACKEND),loky)
SCHEDULER ?= $(REFACE_SCHEDULER)
export REFACE_BACKEND := $(BACKEND)
export REFACE_SCHEDULER := $(SCHEDULER)
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LAB_STAMP := $(VENV)/.installed-lab

.DEFAULT_GOAL := help
.PHONY: help setup book notebooks html bench controls ablation checkpoint test lab run-folder clean

help: ## list the targets and the parameters they take
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo
	@echo "Parameters (make VAR=value):"
	@echo "  PROFILE=tiny|quick|paper   values in params/<profile>.yaml (default: quick)"
	@echo "  DATASET=phantom|<folder>   the simulated cohort or a BIDS-style folder (default: phantom)"
	@echo "  PUBLISH_FACES=0|1          show real subjects' faces in the HTML (default: 0; phantom always shown)"
	@echo "  BACKEND=loky|dask          per-subject workers on this machine or a dask cluster (default: loky)"
	@echo "  SCHEDULER=tcp://host:8786  with BACKEND=dask: the scheduler (default: a LocalCluster here)"
	@echo "  PYTHON=python3.11          interpreter used to create $(VENV)"
	@echo "  PYTEST_ARGS='-m \"not slow\"'  extra arguments for make test"
	@echo "  ABLATION_ARGS='--variants \"cosine schedule\" --ship'  for make ablation (--ship: beside the checkpoints)"

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 not found (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install --quiet --no-cache-dir -c constraints.txt -e '.[test]'
	@touch $@

setup: $(STAMP) ## create .venv with the pinned dependencies

book: $(STAMP) ## execute the chapters (cached) and build the HTML of PROFILE on DATASET
	$(BIN)/python -m refacelib.pipeline book --profile '$(PROFILE)' --dataset '$(DATASET)' --publish-faces '$(PUBLISH_FACES)'

notebooks: $(STAMP) ## execute the chapters only (no HTML)
	$(BIN)/python -m refacelib.pipeline book --profile '$(PROFILE)' --dataset '$(DATASET)' --publish-faces '$(PUBLISH_FACES)' --no-html

html: $(STAMP) ## rebuild the HTML from the executed chapters of PROFILE on DATASET
	$(BIN)/python -m refacelib.pipeline html --profile '$(PROFILE)' --dataset '$(DATASET)'

bench: $(STAMP) ## make book, then the Performance appendix (long on a CPU: see bench/README.md)
	$(BIN)/python -m refacelib.pipeline bench --profile '$(PROFILE)' --dataset '$(DATASET)' --publish-faces '$(PUBLISH_FACES)'

controls: $(STAMP) ## the re-identification controls (shuffled faces; the null phantom at face_coupling 0; 0.5, 0.8, 1), then make book (long on a CPU)
	$(BIN)/python -m refacelib.controls --profile '$(PROFILE)'
	$(BIN)/python -m refacelib.pipeline book --profile '$(PROFILE)' --dataset phantom --publish-faces '$(PUBLISH_FACES)'

ablation: $(STAMP) ## compare training recipes on the validation split (long on a CPU), then make book
	$(BIN)/python -m refacelib.ablation --profile '$(PROFILE)' --dataset '$(DATASET)' $(ABLATION_ARGS)
	$(BIN)/python -m refacelib.pipeline book --profile '$(PROFILE)' --dataset '$(DATASET)' --publish-faces '$(PUBLISH_FACES)'

checkpoint: $(STAMP) ## train the cascade of PROFILE (cached) and export it to checkpoints/ (holds the run's lock)
	$(BIN)/python -m refacelib.pipeline checkpoint --profile '$(PROFILE)' --dataset '$(DATASET)'

run-folder: $(STAMP) ## print the run folder of PROFILE on DATASET
	@$(BIN)/python -m refacelib.pipeline run-folder --profile '$(PROFILE)' --dataset '$(DATASET)'

# Under CI (CI set) the browser checks must run: Chromium is installed first when missing
# (apt-get update + install, as root) and make test stops here if that fails.
test: $(STAMP) ## run the tests (including a tiny-profile build of every chapter)
	@if [ -n "$$CI" ]; then $(BIN)/python -m refacelib.browser --install; fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(LAB_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-cache-dir -c constraints.txt -e '.[test,lab]'
	@touch $@

# JupyterLab holds the run's lock until it exits: `make book` of the same PROFILE and DATASET
# refuses to start meanwhile, and `make lab` refuses while a build holds the run.
lab: $(LAB_STAMP) ## JupyterLab with jupytext: open notebooks/*.py as notebooks (PROFILE, DATASET apply; holds the run)
	$(BIN)/python -m refacelib.pipeline lab --profile '$(PROFILE)' --dataset '$(DATASET)'

clean: ## remove the run folders (keeps .venv)
	rm -rf runs
