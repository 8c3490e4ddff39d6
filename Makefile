# The two set-up commands: `make demo` and `make test`. Both create the virtual environment when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEMO := demo

.PHONY: demo test test-all bench clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -c constraints.txt -e '.[test]'
	touch $@

# Synthetic dataset -> flow store -> (trainer and fusion join as they land).
demo: $(VENV)/.installed
	mkdir -p $(DEMO)
	$(BIN)/data-manifest synth --out $(DEMO)/synth
	cd $(DEMO) && ../$(BIN)/flowprep extract --videos synth --out flows.h5 --size 128x96 --jobs 2
	cd $(DEMO) && ../$(BIN)/flowprep info flows.h5
	cd $(DEMO) && ../$(BIN)/flowprep verify flows.h5

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_extract.py

clean:
	rm -rf $(DEMO) .pytest_cache
