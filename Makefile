# Both targets set up their own virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv lint clean data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: the pinned version installs the CPU build shipped on this machine class
	$(BIN)/python -m pip install -q torch==2.13.0 || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -x --timeout=600 tests

# The README's training data: the CT head of the Debian package invesalius-examples (GPL-2),
# windowed and split by datasets/make_ct_head.py (held-out slices never in train.mat).
DATA ?= data/ct_head
data: $(DATA)/train.mat

$(DATA)/train.mat: | $(STAMP)
	@if ! dpkg -s invesalius-examples >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y invesalius-examples || { apt-get update && apt-get install -y invesalius-examples; }; \
	  else \
	    echo "make data: install the Debian package invesalius-examples first (sudo apt-get install invesalius-examples)" >&2; exit 1; \
	  fi; \
	fi
	$(BIN)/python datasets/make_ct_head.py --outdir $(DATA)

demo: $(STAMP)
	$(BIN)/python -m inverse.demo

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
