#!/usr/bin/env bash
# Build (or reuse) .venv from environment.yml. Idempotent: a stamp file holds the hash of the
# files that define the environment; when it matches, nothing is installed (well under a second).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
want=$(cat environment.yml pyproject.toml tools/env_requirements.py | sha256sum | cut -c1-16)
stamp="$VENV/.tunekit-env-$want"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "[setup] building $VENV from environment.yml (stamp $want)"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)'; then
  echo "[setup] Python >= 3.11 is required; set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
"$PY" tools/env_requirements.py environment.yml > "$reqs"
"$VENV/bin/python" -m pip install -q -r "$reqs"
"$VENV/bin/python" -m pip install -q --no-deps -e .
# Register the kernel inside the venv (not in ~/.local) so papermill -k tunekit finds it here.
"$VENV/bin/python" -m ipykernel install --sys-prefix --name tunekit --display-name "tunekit (Python 3.11)" >/dev/null
rm -f "$VENV"/.tunekit-env-*
touch "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
