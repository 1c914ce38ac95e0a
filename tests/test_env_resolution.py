"""Both GPU environments RESOLVE for an ABCI H200 node, from wheels alone, without installing anything.

`pip install --dry-run --report` for Linux x86-64 (manylinux up to glibc 2.34, ABCI's), CPython
3.11, `--only-binary=:all:` (a source build, like flash-attn's, fails resolution), against PyPI,
with pip's configuration ignored (`--isolated`: this machine's local wheel folders must not stand
in for PyPI). pip reads each wheel's metadata file from the index (PEP 658), so no multi-GB wheel
is downloaded. An unresolvable pin then fails `make test` here instead of a job on ABCI.

What cannot be checked from the CI machines: the cu126/cu128 flavours live on the PyTorch wheel
index (download.pytorch.org), which they cannot reach; that test runs where the index answers and
is skipped with that reason elsewhere (`make setup-gpu` names the index if it fails on a node).
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from env_requirements import pip_requirements  # noqa: E402

from tunekit.gpu import FLAVOURS  # noqa: E402

pytestmark = pytest.mark.slow

PYPI = "https://pypi.org/simple"
# ABCI's glibc is 2.34: every manylinux tag up to it (pip takes one --platform per tag).
PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(34, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15)
        return True
    except OSError:
        return False


def resolve(requirements: list[str], tmp: Path, index: str = PYPI, extra: str | None = None) -> tuple[int, dict, str]:
    """(return code, pip's --report JSON, pip's last error line) of a dry-run install for an ABCI GPU node."""
    tmp.mkdir(parents=True, exist_ok=True)
    reqs, report = tmp / "requirements.txt", tmp / "report.json"
    reqs.write_text("\n".join(requirements) + "\n")
    cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
           "--abi", "cp311", "--abi", "abi3", "--abi", "none", "--index-url", index, "-r", str(reqs)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    if extra:
        cmd += ["--extra-index-url", extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    errors = [x for x in proc.stderr.splitlines() if x.startswith("ERROR")]
    data = json.loads(report.read_text()) if proc.returncode == 0 else {}
    return proc.returncode, data, errors[0] if errors else proc.stderr.strip()[-300:]


def resolved(data: dict) -> dict[str, str]:
    """{normalised name: version} of a pip report."""
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in data["install"]}


def _pins(path: str) -> dict[str, str]:
    out = {}
    for r in pip_requirements(str(REPO / path)):
        name, version = r.split("==")
        out[name.lower().replace("_", "-")] = version
    return out


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory):
    if not _reachable(PYPI + "/pip/"):
        pytest.skip("PyPI is not reachable from here (the resolution needs the index, not the wheels)")
    tmp = tmp_path_factory.mktemp("resolve")
    training = pip_requirements(str(REPO / "environment.yml"))
    gpu = pip_requirements(str(REPO / "environment.gpu.yml"))
    jobs = {"training-gpu": ([*(r for r in training if not r.startswith("torch==")), *gpu],),
            "eval": (pip_requirements(str(REPO / "environment.eval.yml")),),
            "vllm-0.34.0": (["vllm==0.34.0"],)}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {k: pool.submit(resolve, *args, tmp / k) for k, args in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def test_training_environment_resolves_with_pypis_cuda_13_torch(resolutions):
    rc, data, err = resolutions["training-gpu"]
    assert rc == 0, f"environment.yml + environment.gpu.yml do not resolve for an ABCI GPU node: {err}"
    got = resolved(data)
    for name, version in {**_pins("environment.yml"), **_pins("environment.gpu.yml")}.items():
        assert got.get(name) == version, f"{name}: pinned {version}, resolved {got.get(name)}"
    # PyPI's Linux torch 2.13.0 is the CUDA 13.0 build, the default flavour (tunekit.gpu.FLAVOURS).
    assert got["nvidia-cuda-runtime"].startswith("13.0") and "nvidia-nccl-cu13" in got
    assert FLAVOURS["cu130"].index_url == PYPI
    assert "flash-attn" not in got  # sdist only: it would need nvcc and a source build


def test_evaluation_environment_resolves_with_its_own_vllm_torch_and_transformers(resolutions):
    rc, data, err = resolutions["eval"]
    assert rc == 0, f"environment.eval.yml does not resolve for an ABCI GPU node: {err}"
    got = resolved(data)
    for name, version in _pins("environment.eval.yml").items():
        assert got.get(name) == version, f"{name}: pinned {version}, resolved {got.get(name)}"
    # the reason it is a separate environment: vLLM's transformers is not the training one
    assert got["transformers"] != _pins("environment.yml")["transformers"]


def test_an_unresolvable_pin_fails_here(resolutions):
    # The check can fail: vLLM 0.34.0 requires flashinfer-python==0.7.3, which PyPI does not have.
    rc, _, err = resolutions["vllm-0.34.0"]
    assert rc != 0 and "flashinfer-python==0.7.3" in err


@pytest.mark.parametrize("flavour", [f for f in FLAVOURS if FLAVOURS[f].index_url != PYPI])
def test_cuda_12_flavours_resolve_where_the_pytorch_index_is_reachable(flavour, tmp_path):
    f = FLAVOURS[flavour]
    if not _reachable(f.index_url + "/torch/"):
        pytest.skip(f"{f.index_url} is not reachable from here (CI reaches PyPI only); `make setup-gpu "
                    f"CUDA={flavour}` resolves it on the node and names the index if it cannot")
    rc, data, err = resolve([f.requirement], tmp_path, index=f.index_url, extra=PYPI)
    assert rc == 0, f"{f.requirement} from {f.index_url}: {err}"
    assert resolved(data)["torch"] == f.requirement.split("==")[1]


def test_no_environment_file_asks_for_a_source_build():
    for path in ("environment.yml", "environment.gpu.yml", "environment.eval.yml"):
        names = [r.split("==")[0].lower() for r in pip_requirements(str(REPO / path))]
        assert "flash-attn" not in names and "flash_attn" not in names, path
        assert all("==" in r for r in pip_requirements(str(REPO / path))), f"{path}: every package pinned"
