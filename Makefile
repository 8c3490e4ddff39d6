# The two set-up commands: `make demo` and `make test`. Both create the virtual environment when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEMO := demo

.PHONY: demo test test-all bench clean venv

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11 or newer is needed \
	($(PYTHON) is $$($(PYTHON) -V 2>&1)): the pins need numpy 2.4 and the trainer reads TOML with tomllib; \
	run make PYTHON=python3.12 (or 3.11, 3.13)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -c constraints.txt -e '.[test]'
	touch $@

# Synthetic motion dataset -> TV-L1 flow store -> spatial and temporal streams -> fusion report, all on CPU.
# Frames are 64x48 so the whole demo takes a few minutes on 2 cores; real data uses the 340x256 default.
demo: $(VENV)/.installed
	mkdir -p $(DEMO)
	$(BIN)/data-manifest synth --out $(DEMO)/synth
	cd $(DEMO) && ../$(BIN)/flowprep extract --videos synth --out flows.h5 --size 64x48 --jobs 2
	cd $(DEMO) && ../$(BIN)/flowprep info flows.h5
	cd $(DEMO) && ../$(BIN)/flowprep verify flows.h5 --no-progress
	cd $(DEMO) && ../$(BIN)/flowprep show flows.h5 v_SpinClockwise_g01_c01 --out flow_v_SpinClockwise_g01_c01.png
	cd $(DEMO) && ../$(BIN)/trainer run spatial --config demo
	cd $(DEMO) && ../$(BIN)/trainer run temporal --config demo
	cd $(DEMO) && ../$(BIN)/fusion report --split 1
	cd $(DEMO) && ../$(BIN)/fusion predict synth/UCF-101/SpinClockwise/v_SpinClockwise_g01_c01.avi --split 1 --show predict
	@echo "demo done: $(DEMO)/runs/fusion-split1/report.md. The commands live in $(BIN)/: in a new shell run" \
	      "'source $(VENV)/bin/activate' first (or write $(BIN)/flowprep and so on)."

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not gpu"

test-all: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_torchflow.py --size 170x128
	$(PY) benchmarks/bench_trainer.py
	$(PY) benchmarks/bench_dask.py

clean:
	rm -rf $(DEMO) .pytest_cache
