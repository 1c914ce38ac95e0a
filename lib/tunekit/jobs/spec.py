"""A job request and its validated plan: everything decided and checked before `qsub` runs.

`plan_job(JobRequest(...))` resolves the notebook, merges and validates its parameters (unknown
names and wrong types are refused, as papermill would only warn), checks the ABCI resources and
the parallel layout, and fixes the run directory. Every problem is one UserError sentence, raised
before anything is written or submitted.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError
from ..paths import repo_root, resolve, runs_root
from .resources import ResourceType, check_group, check_resources, format_walltime
from .site import Site, load_site

# Secrets reach a job only through its environment (`qsub -v NAME`, value taken from the shell
# that runs qsub): never written into the script, the params file, the notebook or the logs.
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN")
# Stages whose notebook trains with torch.distributed and resumes from its last checkpoint:
# the only ones that may use several processes or nodes, and the only ones a chain can continue.
DISTRIBUTED_STAGES = frozenset({"sft", "dpo"})
MAX_CHAIN = 50
# Variables the job script or the launchers set; `--env` may not override them.
_RESERVED_ENV = re.compile(
    r"^(PBS_.*|OMPI_.*|TUNEKIT_(ROOT|RUNS_DIR|CACHE_DIR|HEADLESS|DEADLINE|CHAIN_.*)|RANK|LOCAL_RANK|"
    r"WORLD_SIZE|MASTER_ADDR|MASTER_PORT|CUDA_VISIBLE_DEVICES|PATH|PYTHONPATH|HOME|TMPDIR|HF_HOME)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+/-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class JobRequest:
    """What the user asked for (CLI flags or Python keywords); `plan_job` checks it."""

    notebook: str
    params: Mapping[str, Any] = field(default_factory=dict)
    params_file: str | None = None
    group: str | None = None
    queue: str = "rt_HF"
    nodes: int = 1
    walltime: str = "01:00:00"
    run_name: str = ""
    chain: int = 1
    nproc_per_node: int | None = None
    modules: Sequence[str] | None = None
    activate: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    pass_secrets: bool = True


@dataclass(frozen=True)
class Activation:
    """How the job enters the Python environment: a venv, a conda env, or nothing."""

    kind: str  # "venv" | "conda" | "none"
    path: str = ""
    conda_sh: str = ""

    def describe(self) -> str:
        return f"{self.kind}:{self.path}" if self.path else self.kind


@dataclass(frozen=True)
class JobPlan:
    """A validated job: every value the template and `qsub` need."""

    notebook: Any  # tunekit.notebooks.NotebookSpec
    params: dict[str, Any]
    group: str
    queue: str
    resource: ResourceType
    nodes: int
    walltime_s: int
    nproc_per_node: int
    launcher: str  # how the engine starts the processes: "single" | "torchrun" | "mpirun"
    run_name: str
    runs_root: Path
    run_dir: Path
    submission: str
    job_name: str
    repo: Path
    modules: tuple[str, ...]
    activation: Activation
    env: tuple[tuple[str, str], ...]
    secrets: tuple[str, ...]
    chain: int
    site: Site
    cache_dir: str = ""  # $TUNEKIT_CACHE_DIR at submission ("" = the repo's .cache), kept for the job

    @property
    def stage(self) -> str:
        return self.notebook.stage

    @property
    def walltime(self) -> str:
        return format_walltime(self.walltime_s)

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    @property
    def job_dir(self) -> Path:
        """Where this submission's script, params and records live: <run_dir>/job/<submission>."""
        return self.run_dir / "job" / self.submission

    @property
    def script_path(self) -> Path:
        return self.job_dir / "job.sh"

    @property
    def params_path(self) -> Path:
        return self.job_dir / "params.yaml"

    @property
    def output_notebook(self) -> Path:
        return self.run_dir / f"{self.notebook.name}.ipynb"

    @property
    def logs_dir(self) -> Path:
        return self.repo / "logs"


def check_text(value: str, what: str) -> str:
    """Refuse control characters (newlines, escapes) in names and paths that reach the job."""
    if _CONTROL.search(value):
        raise UserError(f"{what}: {value!r} contains a control character such as a newline "
                        "(use a plain name)")
    return value


def check_run_name(name: str) -> str:
    """A run name must be one plain folder name (tunekit.runs.check_run_name: the rule of every entry point)."""
    from ..runs import check_run_name as rule

    return rule(name)


def job_name_for(stage: str, run_name: str) -> str:
    """A PBS job name (`-N`): the stage and run name reduced to [A-Za-z0-9_.-], at most 63 chars."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{stage}-{run_name}")[:63]


def parse_activation(text: str | None) -> Activation:
    """`venv:PATH`, `conda:NAME_OR_PATH`, `none`, or None = the environment running this code."""
    if text is None:
        return detect_activation()
    kind, _, target = text.partition(":")
    check_text(target, "--activate")
    if kind == "none" and not target:
        return Activation("none")
    if kind == "venv" and target:
        path = resolve(target, Path.cwd())
        if not (path / "bin" / "activate").is_file():
            raise UserError(f"--activate venv:{target}: {path}/bin/activate not found (give the "
                            "folder of a virtual environment, e.g. venv:.venv)")
        return Activation("venv", str(path))
    if kind == "conda" and target:
        conda_exe = os.environ.get("CONDA_EXE", "")
        if not conda_exe:
            raise UserError(f"--activate conda:{target}: conda is not active in this shell, so its "
                            "location is unknown (run `conda activate` first, or use venv:PATH)")
        conda_sh = Path(conda_exe).resolve().parent.parent / "etc" / "profile.d" / "conda.sh"
        return Activation("conda", target, str(conda_sh))
    raise UserError(f"--activate {text!r}: use venv:PATH, conda:NAME_OR_PATH or none")


def detect_activation() -> Activation:
    """The environment this Python runs in: the same env then runs the job."""
    prefix = Path(sys.prefix)
    conda_prefix = os.environ.get("CONDA_PREFIX", "")
    conda_exe = os.environ.get("CONDA_EXE", "")
    if conda_prefix and conda_exe and Path(conda_prefix).resolve() == prefix.resolve():
        conda_sh = Path(conda_exe).resolve().parent.parent / "etc" / "profile.d" / "conda.sh"
        return Activation("conda", str(prefix), str(conda_sh))
    if sys.prefix != sys.base_prefix and (prefix / "bin" / "activate").is_file():
        return Activation("venv", str(prefix))
    return Activation("none")


def _merge_params(req: JobRequest) -> tuple[dict[str, Any], str]:
    from .. import paramfile

    params: dict[str, Any] = {}
    sources = []
    if req.params_file:
        params.update(paramfile.load(resolve(req.params_file, Path.cwd())))
        sources.append(req.params_file)
    if req.params:
        params.update(req.params)
        sources.append("-p")
    return params, " + ".join(sources) or "parameters"


def _check_processes(req: JobRequest, stage: str, rt: ResourceType,
                     from_params: Any = None) -> tuple[int, str]:
    """(processes per node, how the training engine will launch them) for this stage and type.

    The job itself always runs one papermill kernel on the first node. A training notebook then
    starts its own workers (tunekit.train.distributed.spawn_workers): torchrun on one node, one mpirun across all
    nodes of $PBS_NODEFILE otherwise; the job passes the per-node count as `nproc_per_node`.
    """
    if stage not in DISTRIBUTED_STAGES:
        if req.nodes > 1 or (req.nproc_per_node or 1) > 1:
            raise UserError(f"--nodes/--nproc-per-node: the {stage} notebook runs in one process "
                            "(only sft and dpo use several; submit it with --nodes 1)")
        return 1, "single"
    if req.nproc_per_node is not None and from_params is not None and from_params != req.nproc_per_node:
        raise UserError(f"--nproc-per-node {req.nproc_per_node} and the parameter nproc_per_node "
                        f"{from_params} disagree (give one of them)")
    nproc = next((n for n in (req.nproc_per_node, from_params) if n is not None),
                 max(rt.gpus_per_node, 1))  # default: one process per GPU of the node
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise UserError(f"--nproc-per-node: {nproc!r} is not a positive whole number")
    if rt.gpus_per_node and nproc > rt.gpus_per_node:
        raise UserError(f"--nproc-per-node {nproc}: a {rt.name} node has {rt.gpus_per_node} GPU(s); "
                        "start at most one process per GPU")
    if req.nodes * nproc == 1:
        return 1, "single"
    return nproc, "torchrun" if req.nodes == 1 else "mpirun"


def _max_positions(cfg: Any) -> int | None:
    """The model's position limit when its config is readable here (None = checked in the job)."""
    import json

    spec = getattr(cfg, "model", "")
    if not spec or spec == "tiny":
        return None
    base = resolve(spec)
    for candidate in (base / "hf_model" / "config.json", base / "config.json"):
        if candidate.is_file():
            try:
                value = json.loads(candidate.read_text(encoding="utf-8")).get("max_position_embeddings")
            except (OSError, json.JSONDecodeError):
                return None
            return value if isinstance(value, int) else None
    return None


def _check_layout(cfg: Any, world_size: int) -> None:
    """The training engine's own layout check (batch divisibility, sequence length) for this job."""
    check = getattr(cfg, "check_layout", None)  # training params only (tunekit.train.params.TrainParams)
    if check is not None:
        check(world_size, _max_positions(cfg))


def _check_resume(stage: str, cfg: Any, run_name: str, runs_dir: str) -> None:
    """A run that exists must have the same parameters unless it holds no results (tunekit.runs.check_start).

    Its lock is not checked: the job starts later, and refuses then if another writer is active.
    """
    from ..runs import check_start

    check_start(stage, cfg, run_name, runs_dir, check_lock=False)


def _check_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    out = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise UserError(f"--env {name}: not a valid environment variable name")
        if name in SECRET_ENV:
            raise UserError(f"--env {name}: secrets are never written into job scripts (export "
                            f"{name} in your shell before submitting; the job receives it from there)")
        if _RESERVED_ENV.match(name):
            raise UserError(f"--env {name}: set by the job script itself and cannot be overridden")
        out.append((name, check_text(str(value), f"--env {name}")))
    return tuple(out)


def new_submission_id(run_dir: Path) -> str:
    """A fresh submission folder name under <run_dir>/job/ (time stamp, suffixed if taken)."""
    base = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    sid, n = base, 1
    while (run_dir / "job" / sid).exists():
        n += 1
        sid = f"{base}-{n}"
    return sid


def plan_job(req: JobRequest, site: Site | None = None) -> JobPlan:
    """Validate a request completely (nothing is written); returns the plan or raises UserError."""
    from ..notebooks import check_params, convert_params, spec

    site = site or load_site()
    nb = spec(req.notebook)
    if not nb.exists():
        raise UserError(f"{req.notebook}: notebooks/{nb.name}.ipynb does not exist yet "
                        "(run `tunekit notebooks sync`, or pick another notebook)")
    group = check_group(req.group or os.environ.get("TUNEKIT_ABCI_GROUP"))
    rt, walltime_s = check_resources(req.queue, req.nodes, req.walltime)
    if not isinstance(req.chain, int) or isinstance(req.chain, bool) or not 1 <= req.chain <= MAX_CHAIN:
        raise UserError(f"--chain {req.chain!r}: give the number of jobs, 1 to {MAX_CHAIN}")
    if req.chain > 1 and nb.stage not in DISTRIBUTED_STAGES:
        raise UserError(f"--chain {req.chain}: only training runs (sft, dpo) resume from a "
                        f"checkpoint; the {nb.stage} notebook must fit in one job's walltime")
    params, source = _merge_params(req)
    params = convert_params(nb, params, source)  # typed by the notebook's declarations from here on
    nproc, launcher = _check_processes(req, nb.stage, rt, params.get("nproc_per_node"))
    if req.run_name and params.get("run_name") and params["run_name"] != req.run_name:
        raise UserError(f"--run-name {req.run_name!r} and the parameter run_name "
                        f"{params['run_name']!r} disagree (give one of them)")
    run_name = req.run_name or params.get("run_name") or ""
    if not run_name:
        # Chained jobs must share one run directory, so the name is fixed now, not from the job id.
        first = check_params(nb, {**params, "run_name": ""}, source=source)
        run_name = f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{first.fingerprint()}"
    params["run_name"] = check_run_name(run_name)
    if nb.stage in DISTRIBUTED_STAGES and "nproc_per_node" in nb.params_model().model_fields:
        params["nproc_per_node"] = nproc  # the notebook launches this many workers per node
    cfg = check_params(nb, params, source=source)
    if nb.stage in DISTRIBUTED_STAGES:
        _check_layout(cfg, req.nodes * nproc)
    preflight = getattr(cfg, "job_preflight", None)  # e.g. backend: vllm needs the evaluation environment
    if preflight is not None:
        preflight()

    root = resolve(params["runs_dir"]) if params.get("runs_dir") else runs_root()
    check_text(str(root), "runs_dir")
    run_dir = root / nb.stage / params["run_name"]
    _check_resume(nb.stage, cfg, params["run_name"], params.get("runs_dir") or "")

    modules = tuple(site.modules if req.modules is None else req.modules)
    for m in modules:
        if not _MODULE.match(m):
            raise UserError(f"--module {m!r}: not an environment-module name (like cuda/12.6/12.6.1)")
    activation = parse_activation(req.activate)
    secrets = tuple(n for n in SECRET_ENV if req.pass_secrets and os.environ.get(n))
    repo = repo_root()
    check_text(str(repo), "repository path")
    # The job must find the same content-addressed caches as the shell that submitted it.
    cache_env = os.environ.get("TUNEKIT_CACHE_DIR", "")
    cache_dir = str(resolve(cache_env)) if cache_env else ""
    check_text(cache_dir, "TUNEKIT_CACHE_DIR")
    return JobPlan(
        notebook=nb, params=params, group=group, queue=rt.name, resource=rt, nodes=req.nodes,
        walltime_s=walltime_s, nproc_per_node=nproc, launcher=launcher,
        run_name=params["run_name"], runs_root=root, run_dir=run_dir,
        submission=new_submission_id(run_dir), job_name=job_name_for(nb.stage, params["run_name"]),
        repo=repo, modules=modules, activation=activation, env=_check_env(req.env),
        secrets=secrets, chain=req.chain, site=site, cache_dir=cache_dir)
