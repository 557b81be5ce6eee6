# Two commands do all the set-up on a fresh machine:
#   make demo   - the main job
#   make test   - lint + the test suite (8 simulated CPU devices)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python requirements.txt requirements-test.txt setup.py
	$(BIN)/pip install -q -r requirements-test.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jssl.demo

lint: $(STAMP)
	$(BIN)/ruff check jssl tests bench experiments

test: $(STAMP) lint
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
