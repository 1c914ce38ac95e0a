# tunekit: the two commands a newcomer needs are `make demo` and `make test`.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: help setup setup-gpu demo test test-fast lab lint sync-notebooks bench clean clean-runs browser-deps

help:  ## list the targets (Python 3.11 needed: PYTHON=/path/to/python3.11 make setup)
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup:  ## build .venv from environment.yml (fast when nothing changed) + the git filter that strips notebook outputs
	@bash tools/setup_venv.sh
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		TUNEKIT_ROOT="$(CURDIR)" $(VENV)/bin/tunekit notebooks git-filter >/dev/null; fi

setup-gpu: setup  ## add the GPU extras of environment.gpu.yml (ABCI GPU nodes only)
	$(PY) -m pip install -r <(python3 tools/env_requirements.py environment.gpu.yml)

demo: setup  ## run the whole pipeline on the tiny CPU model and sample data into runs/
	$(VENV)/bin/tunekit demo

# Two pytest workers (pytest-xdist, one test file each at a time): the demo chain overlaps the rest.
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: setup  ## run the whole test suite (unit, integration, every notebook once as the demo chain, browser)
	@bash tools/browser_deps.sh
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: setup  ## the tests not marked slow: no notebook, no training subprocess (a few minutes)
	$(PY) -m pytest -m "not slow"

lint: setup  ## ruff (pyflakes + pycodestyle, 120 columns) and import-linter (layers, no import cycles)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# The server's root is the repository (runs/, datasets/, docs/ open from the file browser); the
# browser opens on notebooks/. LAB_ARGS adds JupyterLab options (e.g. --no-browser).
LAB_PORT ?= 8888
LAB_ARGS ?=
lab: setup  ## JupyterLab on localhost: the repository, opened on notebooks/ (LAB_PORT=8888, LAB_ARGS=...)
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) --ServerApp.root_dir="$(CURDIR)" \
		--LabApp.default_url=/lab/tree/notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

sync-notebooks: setup  ## regenerate each .ipynb from its py:percent twin (the reviewed source)
	$(VENV)/bin/tunekit notebooks sync

bench: setup  ## run the benchmarks (print figures; never part of make test)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# `clean` never touches results: runs/ (or the /groups folder it links to) goes only with clean-runs.
clean:  ## remove the venv and the caches (rebuilt on demand); keeps runs/, your results
	-@if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ -x $(VENV)/bin/tunekit ]; then \
		TUNEKIT_ROOT="$(CURDIR)" $(VENV)/bin/tunekit notebooks git-filter --uninstall >/dev/null; fi
	rm -rf .cache $(VENV) .pytest_cache tests/_output

clean-runs:  ## DELETE runs/: every run directory, checkpoint and trained model (asks first)
	@[ -e runs ] || { echo "no runs/ here"; exit 0; }; \
	if [ -L runs ]; then echo "runs links to $$(readlink runs): delete in that folder what you mean to"; exit 1; fi; \
	echo "this deletes runs/ ($$(du -sh runs/ 2>/dev/null | cut -f1), $$(find runs/ -mindepth 2 -maxdepth 2 -type d | wc -l) run directories)"; \
	if [ "$(CONFIRM)" != "yes" ]; then \
		read -r -p "type yes to delete them: " answer; [ "$$answer" = yes ] || { echo "kept runs/"; exit 1; }; fi; \
	rm -rf runs && echo "deleted runs/"
