# Quickstart: `make demo` (the main job) and `make test` (the suite). Each
# target sets up .venv on a fresh machine first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOGS ?= ../shared/algoperf_v05_logs

.PHONY: setup test lint demo score-v05 clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/sfperf demo

# Scores the published v0.5 logs both rulesets (needs ../shared or LOGS=...).
score-v05: setup
	$(BIN)/sfperf score $(LOGS)/self_tuning --benchmark v0.5 --self-tuning \
	  --out results/v05_self_tuning
	$(BIN)/sfperf score $(LOGS)/external_tuning --benchmark v0.5 \
	  --out results/v05_external_tuning

clean-venv:
	rm -rf $(VENV)
