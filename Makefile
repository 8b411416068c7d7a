# One command sets up and runs the main job; one sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The main job: a model store on MNIST, made from the first half of the data and updated with
## the second (gpjax init, gpjax update, history, export; experiments/results/demo has timings).
demo: $(STAMP)
	$(BIN)/python -m experiments.demo --out results/demo $(ARGS)

## The test suite (what CI runs): everything but the tests marked slow (multi-process runs and a
## few long speech runs, to stay within CI's 15 min); `make test-all` runs those too.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" --durations=15 $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gpjax tests benchmarks experiments

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.bench_core

clean:
	rm -rf $(VENV) results
