"""Small checks the job script runs on the compute node (`python -m tunekit.jobs.node ACTION`).

Kept in Python rather than bash so they are unit-tested: turning GPU UUIDs in
CUDA_VISIBLE_DEVICES into indices (vLLM crashed on ABCI when it held UUIDs) and making sure the
`tunekit` Jupyter kernel that papermill asks for runs this environment's Python.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def gpu_table(nvidia_smi: str = "nvidia-smi") -> list[tuple[str, str]]:
    """[(index, uuid)] of the GPUs this node shows, in nvidia-smi (PCI bus) order; [] without GPUs."""
    try:
        out = subprocess.run([nvidia_smi, "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            rows.append((parts[0], parts[1]))
    return rows


def numeric_visible_devices(visible: str | None, table: list[tuple[str, str]]) -> str:
    """CUDA_VISIBLE_DEVICES with every GPU UUID replaced by its index ("" = leave it unset).

    Unset on a GPU node means every GPU; made explicit here so that all processes (and vLLM)
    see plain indices. An entry that matches no GPU is kept as is, so CUDA reports it.
    """
    by_uuid = {uuid: idx for idx, uuid in table}
    if visible is None or visible.strip() == "":
        return ",".join(idx for idx, _ in table)
    out = []
    for item in (v.strip() for v in visible.split(",")):
        if item.isdigit():
            out.append(item)
            continue
        match = by_uuid.get(item) or next(
            (idx for uuid, idx in by_uuid.items() if item and uuid.startswith(item)), None)
        out.append(match if match is not None else item)
    return ",".join(out)


def ensure_kernel(name: str = "tunekit") -> str:
    """Make sure kernel `name` exists and runs this Python; returns a one-line report."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(name)
    except NoSuchKernel:
        # Register it inside the active environment (not in ~/.local, shared by all envs).
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", name,
                        "--display-name", f"{name} (job)"], check=True, capture_output=True)
        return f"kernel {name}: registered in {sys.prefix}"
    kernel_python = spec.argv[0] if spec.argv else ""
    here = Path(sys.executable).resolve()
    if kernel_python in ("python", "python3"):
        return f"kernel {name}: runs `{kernel_python}` from PATH ({here})"
    if Path(kernel_python).resolve() != here:
        return (f"warning: kernel {name} ({spec.resource_dir}) runs {kernel_python}, not this "
                f"environment's {here}; the notebook will use that one (re-register it with "
                f"`python -m ipykernel install --user --name {name}` inside the right environment)")
    return f"kernel {name}: {kernel_python}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m tunekit.jobs.node`."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["cuda-visible-devices"]:
        print(numeric_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), gpu_table()))
        return 0
    if args == ["kernel"]:
        print(ensure_kernel())
        return 0
    print("usage: python -m tunekit.jobs.node cuda-visible-devices|kernel", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
