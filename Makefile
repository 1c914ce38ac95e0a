# tunekit: the two commands a newcomer needs are `make demo` and `make test`.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: help setup setup-gpu setup-eval gpu-smoke demo test test-fast lab lint sync-notebooks bench clean clean-runs browser-deps

help:  ## list the targets (Python 3.11 needed: PYTHON=/path/to/python3.11 make setup)
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup:  ## build .venv from environment.yml (fast when nothing changed) + the git filter that strips notebook outputs
	@bash tools/setup_venv.sh
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		TUNEKIT_ROOT="$(CURDIR)" $(VENV)/bin/tunekit notebooks git-filter >/dev/null; fi

# CUDA flavour of torch 2.13.0: cu126 | cu128 | cu130; empty = the newest the driver supports (nvidia-smi).
CUDA ?=
setup-gpu: setup  ## torch for this node's CUDA (CUDA=cu126|cu128|cu130, default: detected; environment.gpu.yml)
	$(PY) tools/setup_gpu.py $(if $(CUDA),--cuda $(CUDA))

EVAL_VENV ?= .venv-eval
setup-eval:  ## build .venv-eval (EVAL_VENV=...) with vLLM (environment.eval.yml) for backend: vllm, on a GPU node
	@EVAL_VENV=$(EVAL_VENV) CUDA=$(CUDA) bash tools/setup_eval.sh

gpu-smoke: setup  ## the first 5 minutes on a GPU node: versions, NCCL, varlen, SFT/DPO, resume, vLLM (skips without GPU)
	$(PY) tools/gpu_smoke.py

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

# Each benchmark writes under one temp dir of its own and removes it (also on Ctrl-C / SIGTERM); the
# real llm-jp tokenizer comes from ../shared/fixtures or the folder in TUNEKIT_SHARED_FIXTURES. The figures of
# all of them are printed again at the end, each ratio next to its target.
bench: setup  ## run the benchmarks; ends with every ratio next to its target (never part of make test)
	@log=$$(mktemp -t tunekit-bench-XXXXXX.log); trap 'rm -f "$$log"' EXIT; \
	for b in benchmarks/bench_*.py; do \
		echo "== $$b" | tee -a "$$log"; \
		$(PY) $$b 2>&1 | tee -a "$$log"; status=$${PIPESTATUS[0]}; [ "$$status" -eq 0 ] || exit "$$status"; \
	done; \
	echo; echo "== ratios vs targets (load average now $$(cut -d' ' -f1-3 /proc/loadavg) on $$(nproc) cores)"; \
	grep -h "(target" "$$log" | sed "s/^ *//" | sort -u

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
