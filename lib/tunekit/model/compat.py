"""Check that a model folder loads the same in the competition's transformers versions.

The submission image installs transformers 4.57.0 (the competition's `singularity_submission`
lock file); the official training environment installs 4.47.0 (its `requirements.txt`); the kit
runs 5.x. A folder that loads here may fail there (e.g. `TokenizersBackend`) or, worse, load with
other ids. `check_folder(dir, "submission")` runs `compat_probe.py` in a small side environment
holding that version (transformers and its dependencies at the lock's versions; no torch: config
and tokenizer need none) and in this process, and returns every difference.

Side environments are virtualenvs built once with pip (network to PyPI needed the first time,
about 15 s and 250 MB each) under `<repo>/.cache/side-envs/` ($TUNEKIT_SIDE_ENVS to move them),
under a file lock so concurrent tests and jobs build each one once, in a temp folder renamed into
place (a half-built one is never used).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

PROBE = Path(__file__).with_name("compat_probe.py")


@dataclass(frozen=True)
class SideEnv:
    """A pinned transformers environment of the competition."""

    name: str
    what: str
    pins: tuple[str, ...]

    @property
    def transformers(self) -> str:
        return next(p.split("==")[1] for p in self.pins if p.startswith("transformers=="))


# Versions from the competition's own files (the mirror of llm-jp/ft-llm-2026):
# singularity_submission/uv.lock (submission image) and tuning/installers/abci/src/requirements.txt
# (official training environment). tokenizers 0.21.0 is the pin of transformers 4.47.0 and has
# abi3 wheels, so both environments install on the kit's Python 3.11.
ENVS = {
    "submission": SideEnv("submission", "the submission image (transformers 4.57.0, uv.lock)", (
        "transformers==4.57.0", "tokenizers==0.22.1", "huggingface-hub==0.35.3", "jinja2==3.1.6",
        "markupsafe==3.0.3", "numpy==2.2.6", "safetensors==0.6.2", "regex==2025.9.18", "pyyaml==6.0.3",
        "filelock==3.19.1", "packaging==25.0", "requests==2.32.5", "tqdm==4.67.1", "fsspec==2025.9.0",
        "hf-xet==1.1.10", "certifi==2025.10.5", "charset-normalizer==3.4.3", "idna==3.10",
        "urllib3==2.5.0", "typing-extensions==4.15.0")),
    "official-training": SideEnv("official-training", "the official training environment (transformers "
                                 "4.47.0, requirements.txt)", (
        "transformers==4.47.0", "tokenizers==0.21.0", "huggingface-hub==0.26.5", "jinja2==3.1.4",
        "markupsafe==2.1.5", "numpy==1.26.4", "safetensors==0.4.3", "regex==2024.7.24", "pyyaml==6.0.1",
        "filelock==3.15.4", "packaging==24.1", "requests==2.32.3", "tqdm==4.66.4", "fsspec==2024.5.0",
        "certifi==2024.7.4", "charset-normalizer==3.3.2", "idna==3.7", "urllib3==2.2.2",
        "typing-extensions==4.12.2")),
}


class SideEnvUnavailable(UserError):
    """A side environment could not be built (usually: no network to PyPI)."""


def envs_root() -> Path:
    """Where side environments live: $TUNEKIT_SIDE_ENVS or <repo>/.cache/side-envs."""
    from ..paths import repo_root

    env = os.environ.get("TUNEKIT_SIDE_ENVS")
    return Path(env).resolve() if env else repo_root() / ".cache" / "side-envs"


def _key(env: SideEnv) -> str:
    text = json.dumps({"pins": env.pins, "python": sys.version_info[:2]})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def side_python(name: str, log=None) -> Path:
    """The python of side environment `name` ("submission" / "official-training"), built if missing."""
    from filelock import FileLock

    from ..atomic import atomic_dir

    env = ENVS[name]
    final = envs_root() / f"{name}-{_key(env)}"
    python = final / "bin" / "python"
    if (final / "READY").is_file():
        return python
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "READY").is_file():  # built by another process while we waited
            return python
        if log:
            log(f"building the transformers {env.transformers} check environment in {final} (once) ...")
        with atomic_dir(final, overwrite=True) as tmp:
            _build(env, tmp)
            (tmp / "READY").write_text(json.dumps({"pins": env.pins}) + "\n", encoding="utf-8")
    return python


def _build(env: SideEnv, where: Path) -> None:
    steps = [[sys.executable, "-m", "venv", str(where)],
             [str(where / "bin" / "python"), "-m", "pip", "install", "--no-input", "--quiet",
              "--disable-pip-version-check", *env.pins]]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [x for x in (proc.stderr or proc.stdout).splitlines()
                     if x.strip() and not x.startswith("WARNING: Location")]
            raise SideEnvUnavailable(
                f"cannot build the transformers {env.transformers} check environment ({cmd[2]} failed: "
                f"{lines[-1][:200] if lines else 'no output'}) (it needs PyPI access once)")


def probe_in(name: str, folder: Path, log=None) -> dict[str, Any]:
    """The probe JSON of `folder` in side environment `name`."""
    python = side_python(name, log)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONNOUSERSITE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("PYTHONPATH", None)
    # The venv was renamed after its build: run its interpreter, never its scripts (shebangs).
    proc = subprocess.run([str(python), str(PROBE), str(folder)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{folder}: the transformers {ENVS[name].transformers} probe failed ({last[:300]})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe_here(folder: Path) -> dict[str, Any]:
    """The probe JSON of `folder` in this process's transformers."""
    from . import compat_probe

    return compat_probe.probe(str(folder))


def differences(here: dict[str, Any], there: dict[str, Any]) -> list[str]:
    """What differs between two probes ([] = the folder loads identically)."""
    out = []
    tok_there = there.get("tokenizer") or {}
    if "error" in tok_there:
        return [f"tokenizer does not load in transformers {there['transformers']}: {tok_there['error']}"]
    for part in ("config", "tokenizer", "chat"):
        a, b = here.get(part), there.get(part)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "class")
            if keys:
                out.append(f"{part} differs in {', '.join(keys)}")
        else:
            out.append(f"{part} differs" if a is not None and b is not None
                       else f"{part} {'missing' if b is None else 'present'} in transformers {there['transformers']}")
    return out


def check_folder(folder: str | Path, name: str = "submission", log=None) -> dict[str, Any]:
    """Probe `folder` here and in side environment `name`; {"transformers": v, "differences": [...]}."""
    folder = Path(folder)
    there = probe_in(name, folder, log)
    here = probe_here(folder)
    return {"transformers": there["transformers"], "differences": differences(here, there)}
