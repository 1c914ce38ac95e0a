"""The GPU stack as the kit sees it: CUDA flavours, what the node shows, whether torch can use it.

PyPI's `torch==2.13.0` for Linux x86-64 is a CUDA 13.0 build (nvidia-*-cu13, NCCL 2.29), which
needs an R580+ driver. On an older driver `torch.cuda.is_available()` is simply False, and a
training job that quietly fell back to the CPU would train there until its walltime. So:

- `FLAVOURS` is the one table of the CUDA builds the kit installs (`make setup-gpu CUDA=...`,
  tools/setup_gpu.py) and the oldest driver CUDA version each needs;
- `flavour_for(driver_cuda)` picks the newest flavour a driver supports (from `nvidia-smi`);
- `check_cuda_usable()` stops with one sentence when GPUs are visible (nvidia-smi lists some,
  CUDA_VISIBLE_DEVICES names some, or the PBS job asked for some: $TUNEKIT_EXPECT_GPUS, set by
  the job template) but torch cannot use them, naming torch's CUDA version and the driver's;
- `versions()` is what every GPU job prints first and records (env.json, train_result.json):
  torch and the CUDA it is built for, cuDNN, NCCL, the driver and the CUDA it supports, GPUs.

`python -m tunekit.gpu` prints the versions line and runs the check (the job template calls it).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import UserError


@dataclass(frozen=True)
class Flavour:
    """One CUDA build of torch: where pip finds it and the oldest driver CUDA version it runs on."""

    name: str                  # cu126 | cu128 | cu130
    cuda: tuple[int, int]      # the CUDA runtime the wheel is built against
    index_url: str             # pip index holding it
    requirement: str           # what to pip install from there (the same torch version)


TORCH_VERSION = "2.13.0"
# The oldest driver for each runtime is NVIDIA's: CUDA 12.6 needs R560, 12.8 R570, 13.0 R580
# (`nvidia-smi` prints the newest CUDA a driver supports as "CUDA Version: X.Y").
FLAVOURS: dict[str, Flavour] = {f.name: f for f in [
    Flavour("cu130", (13, 0), "https://pypi.org/simple", f"torch=={TORCH_VERSION}"),
    Flavour("cu128", (12, 8), "https://download.pytorch.org/whl/cu128", f"torch=={TORCH_VERSION}+cu128"),
    Flavour("cu126", (12, 6), "https://download.pytorch.org/whl/cu126", f"torch=={TORCH_VERSION}+cu126"),
]}
DEFAULT_FLAVOUR = "cu130"  # what PyPI gives `make setup` on Linux x86-64


def parse_version(text: str | None) -> tuple[int, int] | None:
    """'12.8' / '13.0.1' -> (12, 8); None for anything else."""
    m = re.match(r"^\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def flavour_for(driver_cuda: str | None) -> Flavour | None:
    """The newest flavour whose CUDA runtime the driver supports (None: too old for all of them)."""
    have = parse_version(driver_cuda)
    if have is None:
        return None
    fitting = [f for f in FLAVOURS.values() if f.cuda <= have]
    return max(fitting, key=lambda f: f.cuda) if fitting else None


# ------------------------------------------------------------------ what the node shows
def _nvidia_smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def driver_info() -> dict[str, Any]:
    """{"driver": "570.86.15", "driver_cuda": "12.8", "gpus": [names]} from nvidia-smi ({} without it)."""
    listing = _nvidia_smi("--query-gpu=driver_version,name,memory.total", "--format=csv,noheader")
    if listing is None:
        return {}
    rows = [[c.strip() for c in line.split(",")] for line in listing.splitlines() if line.strip()]
    header = _nvidia_smi() or ""
    m = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return {"driver": rows[0][0] if rows else None, "driver_cuda": m.group(1) if m else None,
            "gpus": [r[1] for r in rows if len(r) > 1]}


def visible_gpus(environ: Mapping[str, str] | None = None, info: Mapping[str, Any] | None = None) -> str | None:
    """Why this process should have GPUs (a phrase), or None when nothing says so."""
    env = os.environ if environ is None else environ
    info = driver_info() if info is None else info
    if info.get("gpus"):
        return f"nvidia-smi lists {len(info['gpus'])} GPU(s)"
    cvd = (env.get("CUDA_VISIBLE_DEVICES") or "").strip()
    if cvd and cvd not in ("-1", "none", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={cvd}"
    expect = (env.get("TUNEKIT_EXPECT_GPUS") or "").strip()
    if expect.isdigit() and int(expect) > 0:
        return f"the PBS job requested {expect} GPU(s) per node"
    return None


def cuda_problem(environ: Mapping[str, str] | None = None, info: Mapping[str, Any] | None = None,
                 cuda_available: bool | None = None, torch_cuda: str | None | bool = False) -> str | None:
    """The one-sentence reason GPUs are visible but unusable by this torch, or None when all is well.

    The keyword arguments replace what is read from the machine (for tests); `torch_cuda` False
    means "ask torch" (None is a CPU-only torch build).
    """
    import torch

    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if available:
        return None
    info = driver_info() if info is None else info
    evidence = visible_gpus(environ, info)
    if evidence is None:
        return None
    built = torch.version.cuda if torch_cuda is False else torch_cuda
    driver = info.get("driver") or "unknown (nvidia-smi not found)"
    driver_cuda = info.get("driver_cuda")
    fits = flavour_for(driver_cuda)
    have, need = parse_version(driver_cuda), parse_version(built)
    if built is None:
        fix = f"this torch is a CPU-only build; run `make setup-gpu{' CUDA=' + fits.name if fits else ''}`"
    elif have and need and have < need:
        fix = (f"the driver supports CUDA {driver_cuda} only: run `make setup-gpu CUDA={fits.name}`" if fits else
               f"the driver supports CUDA {driver_cuda} only, older than every flavour the kit installs "
               f"({', '.join(FLAVOURS)}): ask for a newer driver")
    else:
        fix = "check that the GPUs are healthy (nvidia-smi) and that the job owns them"
    return (f"GPUs are visible ({evidence}) but CUDA is not usable: torch {torch.__version__} is built for CUDA "
            f"{built or 'none'}, the driver is {driver}"
            f"{f' (CUDA {driver_cuda})' if driver_cuda else ''}; {fix}. Training would silently fall back "
            "to the CPU, so it stops here (set TUNEKIT_DEVICE=cpu to train on the CPU on purpose)")


def check_cuda_usable(environ: Mapping[str, str] | None = None) -> None:
    """Raise UserError when GPUs are visible but torch cannot use them (see `cuda_problem`)."""
    env = os.environ if environ is None else environ
    if env.get("TUNEKIT_DEVICE", "auto") == "cpu":
        return
    problem = cuda_problem(env)
    if problem:
        raise UserError(problem)


def versions() -> dict[str, Any]:
    """torch, CUDA, cuDNN, NCCL and driver versions plus the GPUs torch sees (what GPU jobs record)."""
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        nccl = torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else None
        out.update({
            "cudnn": torch.backends.cudnn.version(),
            "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1),
        })
    info = driver_info()
    out.update({"driver": info.get("driver"), "driver_cuda": info.get("driver_cuda")})
    return out


def versions_line(v: Mapping[str, Any]) -> str:
    """The one-line form printed at the start of GPU jobs."""
    gpus = v.get("gpus") or []
    names = f"{len(gpus)} x {gpus[0]}" if gpus else "no GPU usable by torch"
    return (f"torch {v.get('torch')} (CUDA {v.get('torch_cuda')}), cuDNN {v.get('cudnn')}, NCCL {v.get('nccl')}, "
            f"driver {v.get('driver')} (CUDA {v.get('driver_cuda')}); {names}")


def main(argv: list[str] | None = None) -> int:
    """`python -m tunekit.gpu [--report]`: the versions line, then exit 2 if CUDA is unusable (0 with --report)."""
    args = sys.argv[1:] if argv is None else argv
    print(f"[gpu] {versions_line(versions())}", flush=True)
    try:
        check_cuda_usable()
    except UserError as exc:
        print(f"{'warning' if '--report' in args else 'error'}: {exc}", file=sys.stderr, flush=True)
        return 0 if "--report" in args else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
