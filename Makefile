# Commands that do all the set-up on a fresh machine:
#   make quickstart - the main job: SimCLR on Fashion-MNIST, then linear probe and kNN
#   make test       - lint + the test suite (8 simulated CPU devices)
#   make demo       - a tour of the sharded losses (1 vs 8 devices)
#   make bench      - the benchmarks under bench/
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart data demo test lint venv bench clean

FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python requirements.txt requirements-test.txt setup.py
	$(BIN)/pip install -q -r requirements-test.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# Embedded real data from Debian's packages (offline, no download at run time):
# Fashion-MNIST IDX files, the fortunes corpus, and espeak-ng for the spoken digits; and
# tcmalloc, which jssl's CPU runs restart with (jssl/cpu_malloc.py), and g++, which builds
# jssl's native CPU attention kernel on first use (jssl/native/).
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4) \
                        /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)
DEB_DATA := $(FMNIST_DIR)/train-images-idx3-ubyte.gz:dataset-fashion-mnist \
            /usr/share/games/fortunes/fortunes:fortunes /usr/bin/espeak-ng:espeak-ng \
            $(TCMALLOC):libtcmalloc-minimal4 /usr/bin/g++:g++
data:
	@missing=""; for pair in $(DEB_DATA); do \
	  [ -e "$${pair%%:*}" ] || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing) \
	      || echo "warning: could not apt-get install$$missing"; \
	  else echo "install Debian's packages:$$missing"; fi; \
	fi

quickstart: $(STAMP) data
	$(BIN)/python -m jssl.main --config=experiments/simclr.py:fashion_mnist \
	    --workdir=runs/simclr_fashion_mnist

demo: $(STAMP)
	$(BIN)/python -m jssl.demo

lint: $(STAMP)
	$(BIN)/ruff check jssl tests bench experiments

# The suite runs under tcmalloc when it is installed, as `python -m jssl.main` does on CPU.
test: $(STAMP) data lint
	LD_PRELOAD="$$([ -e $(TCMALLOC) ] && echo $(TCMALLOC))" \
	    $(BIN)/python -m pytest -n 2 --dist loadgroup --durations=20 tests

# PyTorch for the peers of bench/compare.py, in its own venv (never in jssl's requirements).
TORCH_VENV := bench/.venv-torch
$(TORCH_VENV)/.installed: bench/requirements.txt
	$(PY) -m venv $(TORCH_VENV)
	echo '*' > $(TORCH_VENV)/.gitignore
	$(TORCH_VENV)/bin/pip install -q -r bench/requirements.txt
	touch $@

bench: $(STAMP) data $(TORCH_VENV)/.installed
	$(BIN)/python bench/compare.py
	$(BIN)/python bench/conv_layers.py
	$(BIN)/python bench/xla_cpu_flag.py
	$(BIN)/python bench/gn_convnet.py
	$(BIN)/python bench/cpu_malloc.py
	$(BIN)/python bench/render.py

clean:
	rm -rf $(VENV) $(TORCH_VENV) .pytest_cache .ruff_cache
