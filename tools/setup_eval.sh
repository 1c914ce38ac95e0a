#!/usr/bin/env bash
# `make setup-eval`: build the evaluation environment (environment.eval.yml) in $EVAL_VENV (.venv-eval).
# vLLM and the torch/transformers it pins live there, apart from the training environment; the kit
# finds it at <repo>/.venv-eval (or $TUNEKIT_EVAL_PYTHON) and runs only generation in it
# (lib/tunekit/evaluate/vllm_worker.py). Idempotent: a stamp of environment.eval.yml skips a rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
EVAL_VENV=${EVAL_VENV:-.venv-eval}
PY=${PYTHON:-python3}
CUDA=${CUDA:-}
if [ -n "$CUDA" ] && [ "$CUDA" != "cu130" ]; then
  echo "[setup-eval] CUDA=$CUDA: the evaluation environment is resolvable from PyPI for cu130 only (vLLM 0.32.0" \
       "and torch 2.13.0 there are CUDA 13.0 builds, driver >= R580); with an older driver use backend: transformers" >&2
  exit 2
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "[setup-eval] vLLM wheels are for Linux x86-64 with an NVIDIA GPU; this is $(uname -s)-$(uname -m)" >&2
  exit 2
fi
want=$(cat environment.eval.yml tools/env_requirements.py | sha256sum | cut -c1-16)
stamp="$EVAL_VENV/.tunekit-eval-$want"
if [ -f "$stamp" ]; then
  echo "[setup-eval] $EVAL_VENV is up to date"
  exit 0
fi
if ! "$PY" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)'; then
  echo "[setup-eval] vLLM 0.32.0 needs Python 3.11-3.14; set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
echo "[setup-eval] building $EVAL_VENV from environment.eval.yml (several GB of wheels, a few minutes)"
[ -x "$EVAL_VENV/bin/python" ] || "$PY" -m venv "$EVAL_VENV"
"$EVAL_VENV/bin/python" -m pip install -q --upgrade pip
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
"$PY" tools/env_requirements.py environment.eval.yml > "$reqs"
"$EVAL_VENV/bin/python" -m pip install -q --only-binary=:all: -r "$reqs"
rm -f "$EVAL_VENV"/.tunekit-eval-*
touch "$stamp"
echo "[setup-eval] done: $("$EVAL_VENV/bin/python" -c 'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "CUDA", torch.version.cuda, "transformers", transformers.__version__)')"
