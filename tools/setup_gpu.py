"""`make setup-gpu [CUDA=cu126|cu128|cu130]`: install torch 2.13.0 built for this node's CUDA into the environment.

    .venv/bin/python tools/setup_gpu.py [--cuda cu128] [--dry-run]
    (conda: python tools/setup_gpu.py ..., inside the activated environment)

Without --cuda the flavour is the newest the driver supports, from `nvidia-smi` on a GPU node
(tunekit.gpu.flavour_for). The flavour's wheel index and requirement come from tunekit.gpu.FLAVOURS
(documented in environment.gpu.yml). Only torch (and its CUDA libraries) changes: every other
package is held at environment.yml's pins. Afterwards the script checks that the installed
torch is built for the flavour's CUDA and, on a GPU node, that it can use the GPUs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
sys.path.insert(0, str(REPO / "tools"))


def plan(cuda: str | None) -> tuple[object, str]:
    """(flavour, why) for the requested or detected CUDA flavour; SystemExit with one sentence otherwise."""
    from tunekit.gpu import FLAVOURS, driver_info, flavour_for

    if cuda:
        if cuda not in FLAVOURS:
            raise SystemExit(f"setup-gpu: CUDA={cuda} is not a flavour the kit installs (use one of "
                             f"{', '.join(FLAVOURS)})")
        return FLAVOURS[cuda], "as requested"
    info = driver_info()
    if not info.get("driver_cuda"):
        raise SystemExit("setup-gpu: nvidia-smi is not available here, so the driver's CUDA version is unknown (run "
                         f"this on a GPU node, or name the flavour: make setup-gpu CUDA={'|'.join(FLAVOURS)})")
    f = flavour_for(info["driver_cuda"])
    if f is None:
        raise SystemExit(f"setup-gpu: driver {info['driver']} supports CUDA {info['driver_cuda']}, older than every "
                         f"flavour of torch the kit installs ({', '.join(FLAVOURS)}); ask for a newer driver")
    return f, f"driver {info['driver']} supports CUDA {info['driver_cuda']}"


def pins() -> list[str]:
    """environment.yml's pins except torch: held fixed while torch is swapped."""
    from env_requirements import pip_requirements

    return [r for r in pip_requirements(str(REPO / "environment.yml")) if not r.startswith("torch")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuda", default=None, help="cu126 | cu128 | cu130 (default: detected from nvidia-smi)")
    ap.add_argument("--dry-run", action="store_true", help="print the pip commands only")
    args = ap.parse_args(argv)
    flavour, why = plan(args.cuda)
    py = sys.executable
    want = ".".join(map(str, flavour.cuda))
    have = subprocess.run([py, "-c", "import torch; print(torch.version.cuda)"], capture_output=True, text=True)
    if have.stdout.strip() == want and not args.dry_run:
        print(f"[setup-gpu] torch is already built for CUDA {want} ({flavour.name}); checking the GPUs", flush=True)
        return subprocess.run([py, "-m", "tunekit.gpu"], cwd=REPO).returncode
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(pins()) + "\n")
        constraints = f.name
    index = ["--index-url", flavour.index_url]
    if "pypi.org" not in flavour.index_url:
        index += ["--extra-index-url", "https://pypi.org/simple"]  # torch's other dependencies
    steps = [[py, "-m", "pip", "uninstall", "-y", "torch"],
             [py, "-m", "pip", "install", "--only-binary=:all:", "-c", constraints, *index, flavour.requirement]]
    print(f"[setup-gpu] torch {flavour.requirement.split('==')[1]} for {flavour.name} (CUDA "
          f"{'.'.join(map(str, flavour.cuda))}): {why}", flush=True)
    for cmd in steps:
        print("[setup-gpu] " + " ".join(cmd), flush=True)
        if not args.dry_run and subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"setup-gpu: `{' '.join(cmd[2:5])} ...` failed (is {flavour.index_url} reachable "
                             "from this node?)")
    if args.dry_run:
        return 0
    check = subprocess.run([py, "-c", "import torch, json; print(json.dumps([torch.__version__, torch.version.cuda]))"],
                           capture_output=True, text=True)
    version, built = __import__("json").loads(check.stdout)
    if built != want:
        raise SystemExit(f"setup-gpu: the installed torch {version} is built for CUDA {built}, not {want}")
    print(f"[setup-gpu] torch {version} (CUDA {built}) installed", flush=True)
    usable = subprocess.run([py, "-m", "tunekit.gpu"], cwd=REPO)
    return usable.returncode


if __name__ == "__main__":
    sys.exit(main())
