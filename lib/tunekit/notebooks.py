"""The kit's notebooks: registry, parameter checks, headless execution, and py:percent pairing.

Every notebook lives in `notebooks/` as a py:percent file (the reviewed source) and its paired
`.ipynb` (what JupyterLab opens and papermill runs). The `.ipynb` is committed without outputs
(`tunekit.nbclean`: the git filter strips what a JupyterLab session saves); each final
`# NBVAL_CHECK_OUTPUT` summary cell keeps, in its metadata, the regression reference: what the
cell prints in the demo chain (`DEMO`, run by `make demo` and by the test suite; `refresh` stores
it). The marker keeps nbval's name, and its comparison rules (tests/nbval_sanitize.cfg).
The `parameters` cell is generated from the notebook's params model (`tunekit.params.parameters_cell`):
`sync` writes it into the .py twin, `check` fails when the committed cell differs.
"""
from __future__ import annotations

import argparse
import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from . import nbclean
from .errors import UserError, is_rendered_user_error
from .nbclean import CHECK_MARK, KERNELSPEC
from .paths import repo_root, resolve
from .values import Text

KERNEL = KERNELSPEC["name"]


@dataclass(frozen=True)
class NotebookSpec:
    """One notebook: file stem, run stage (folder under runs/) and its parameters model."""

    name: str
    stage: str
    params_class: str  # "module:Class"

    @property
    def ipynb(self) -> Path:
        return repo_root() / "notebooks" / f"{self.name}.ipynb"

    @property
    def py(self) -> Path:
        return repo_root() / "notebooks" / f"{self.name}.py"

    def params_model(self):
        """Import and return the notebook's NotebookParams subclass."""
        module, cls = self.params_class.split(":")
        return getattr(importlib.import_module(module), cls)

    def exists(self) -> bool:
        return self.ipynb.exists()


NOTEBOOKS = [
    NotebookSpec("10_inspect_data", "inspect_data", "tunekit.data.params:InspectParams"),
    NotebookSpec("20_convert_nemo_to_hf", "convert_nemo_to_hf", "tunekit.convert.params:NemoToHFParams"),
    NotebookSpec("21_convert_hf_to_nemo", "convert_hf_to_nemo", "tunekit.convert.params:HFToNemoParams"),
    NotebookSpec("30_sft", "sft", "tunekit.train.params:SFTParams"),
    NotebookSpec("40_dpo", "dpo", "tunekit.train.params:DPOParams"),
    NotebookSpec("50_evaluate", "evaluate", "tunekit.evaluate.params:EvalParams"),
    NotebookSpec("60_compare_runs", "compare_runs", "tunekit.runview.params:CompareParams"),
]


def spec(name_or_path: str | os.PathLike) -> NotebookSpec:
    """Find a notebook by name (`30_sft`), stage (`sft`) or path (`notebooks/30_sft.ipynb`)."""
    key = Path(str(name_or_path)).stem
    for s in NOTEBOOKS:
        if key in (s.name, s.stage):
            return s
    names = ", ".join(s.name for s in NOTEBOOKS)
    raise UserError(f"unknown notebook {str(name_or_path)!r} (known: {names})")


def declared_parameters(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The names, types, defaults and help of a notebook's `parameters` cell (papermill's view)."""
    import papermill as pm

    return dict(pm.inspect_notebook(str(path)))


def check_params(nb: NotebookSpec, params: Mapping[str, Any], source: str = "parameters"):
    """Reject unknown names (papermill would only warn) and ill-typed values; returns the config."""
    return nb.params_model().parse(convert_params(nb, params, source), source=source)


def convert_params(nb: NotebookSpec, params: Mapping[str, Any], source: str = "parameters") -> dict[str, Any]:
    """Known names only, values converted by their declared types (what papermill then injects)."""
    declared = declared_parameters(nb.ipynb)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        from .params import unknown_names

        raise UserError(f"{source}: {nb.name} has no parameter(s) {unknown_names(unknown, declared)} "
                        f"(`tunekit notebooks run {nb.name} --help` lists its {len(declared)} parameters)")
    return nb.params_model().convert(dict(params), source=source)


def ensure_kernel() -> str:
    """The kernel name to run with: `tunekit` if registered, else a one-sentence fix."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL in KernelSpecManager().find_kernel_specs():
        return KERNEL
    raise UserError(f"no Jupyter kernel named '{KERNEL}' (run `make setup`, or "
                    f"`python -m ipykernel install --user --name {KERNEL}` inside the environment)")


def _logged_kernel(log_path: Path):
    """A kernel manager class whose kernel writes its own stderr to `log_path`, not to the terminal.

    The kernel's process messages (its TCP notice, and on Ctrl-C the traceback of a reply sent to a
    closed socket) are no concern of the person running the notebook; the cells' output is kept
    in the executed notebook as usual, and the log stays in the run directory for a post-mortem.
    """
    from jupyter_client.manager import KernelManager

    class LoggedKernelManager(KernelManager):
        # start_kernel (sync and async) launches through this method, so one override covers both.
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            log_path.parent.mkdir(parents=True, exist_ok=True)
            kw.setdefault("stderr", open(log_path, "a", encoding="utf-8"))  # noqa: SIM115 - the kernel owns it
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager


def run_notebook(name: str, params: Mapping[str, Any] | None = None, *, source: str = "parameters",
                 kernel: str | None = None, stdout=None) -> Path:
    """Execute a notebook headless with papermill into its run directory; returns that directory.

    Everything is checked before the first write: the parameters, the run name, an existing run's
    parameters (`tunekit.runs.check_start`) and its lock; a refused start changes nothing. The
    runner then holds the run's lock (the kernel it starts shares it), and the executed notebook
    `runs/<stage>/<run_name>/<name>.ipynb` is saved atomically after every cell and every 60 s
    (`execute`), so a killed job or a full disk keeps the last complete copy. `stdout`, a writable
    text stream, receives what the notebook prints as it prints it (the demo's progress display).
    """
    from .runs import check_start, default_run_name

    nb = spec(name)
    params = convert_params(nb, params or {}, source=source)
    cfg = check_params(nb, params, source=source)
    run_name = params.get("run_name") or default_run_name(nb.stage, cfg.fingerprint())
    params["run_name"] = run_name
    check = check_start(nb.stage, cfg, run_name, params.get("runs_dir") or "")
    out_dir = check.path
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TUNEKIT_HEADLESS"] = "1"  # the kernel inherits it: progress bars become log lines
    execute(nb.ipynb, out_dir / f"{nb.name}.ipynb", params, kernel=kernel or ensure_kernel(),
            label=nb.name, stdout=stdout)
    return out_dir


class _AtomicNotebookFile:
    """papermill I/O handler for one output path: every save is temp file + fsync + rename."""

    def read(self, path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    def listdir(self, path: str) -> list[str]:
        return [str(p) for p in Path(path).iterdir()]

    def write(self, buf: str, path: str) -> None:
        from .atomic import write_text

        write_text(path, buf)

    def pretty_path(self, path: str) -> str:
        return path


_ATOMIC_OUTPUTS: set[str] = set()


def _save_atomically(path: Path) -> None:
    # papermill picks the I/O handler whose registered prefix the path starts with (newest first):
    # registering the exact output path routes every save of it through the atomic writer.
    from papermill.iorw import papermill_io

    key = str(path)
    if key not in _ATOMIC_OUTPUTS:
        papermill_io.register(key, _AtomicNotebookFile())
        _ATOMIC_OUTPUTS.add(key)


def _signal_kernel(km, signum: int) -> bool:
    """Send `signum` to the kernel's process group (its own session); False if no kernel runs yet."""
    prov = getattr(km, "provisioner", None)
    proc = getattr(prov, "process", None)
    if proc is None:
        return False
    pgid = getattr(prov, "pgid", None)
    try:
        if pgid:
            os.killpg(pgid, signum)
        else:
            os.kill(proc.pid, signum)
    except ProcessLookupError:
        return False
    return True


def execute(input_path: Path, output_path: Path, parameters: Mapping[str, Any], *, kernel: str,
            label: str = "", cwd: Path | None = None, stdout=None) -> None:
    """papermill with the kit's guarantees, for the runner and for PBS jobs (`tunekit notebooks execute`).

    - The run directory (the output's folder) is locked for this process and the kernel it starts.
    - The executed notebook is written atomically (temp + rename) on every save: a kill or a full
      disk leaves the last complete copy, never invalid JSON.
    - SIGTERM / SIGINT reach the kernel as Jupyter's interrupt (SIGINT): training saves a
      checkpoint and stops (tunekit.signals); a second signal interrupts again, which stops the
      kernel's work at once, and the kernel is killed if it does not end within 10 s.
    - What the cells print reaches this process's stdout / stderr as it is printed (a job's log),
      or `stdout` when one is given (the demo's progress display).
    - A full disk, a refused start, a failing cell: one sentence (UserError / DiskFull / Interrupted).
    """
    import signal as _signal
    import sys
    import threading

    warnings.filterwarnings("ignore", module="tqdm")  # papermill imports tqdm.autonotebook, which warns
    import papermill as pm

    from . import runlock
    from .atomic import disk_full, is_disk_full
    from .errors import DiskFull, Interrupted
    from .signals import StopRequest, exit_code, note, signal_name

    label = label or Path(input_path).stem
    run_dir = Path(output_path).parent
    run_dir.mkdir(parents=True, exist_ok=True)
    runlock.acquire(run_dir)
    _save_atomically(Path(output_path))
    km = _logged_kernel(run_dir / "kernel.log")(kernel_name=kernel)

    def interrupt(signum: int) -> None:
        if not _signal_kernel(km, _signal.SIGINT):
            raise Interrupted(f"{signal_name(signum)} received before {label} started; nothing ran",
                              exit_code(signum))
        note(f"{signal_name(signum)} received: interrupting {label} (training saves a checkpoint and "
             "stops; send it again to stop at once)")

    def at_once(signum: int) -> None:
        _signal_kernel(km, _signal.SIGINT)
        killer = threading.Timer(10.0, _signal_kernel, args=(km, _signal.SIGKILL))
        killer.daemon = True
        killer.start()

    stop = StopRequest(on_first=interrupt, on_second=at_once)
    try:
        with stop:
            pm.execute_notebook(str(input_path), str(output_path), parameters=dict(parameters),
                                kernel_name=kernel, km=km, cwd=str(cwd or repo_root()),
                                log_output=False, stdout_file=stdout or sys.stdout,
                                stderr_file=sys.stderr if stdout is None else None, progress_bar=False,
                                request_save_on_cell_execute=True, autosave_cell_every=60)
    except pm.PapermillExecutionError as exc:
        code = exit_code(stop.signum) if stop.requested else _signal_code(exc.evalue)
        if is_rendered_user_error(exc.evalue, exc.traceback):
            # The cell already said what is wrong and what to do: pass the sentence on as is.
            message = (f"{exc.evalue} (in cell {exc.exec_count} of {label}; the executed notebook up "
                       f"to the failure is {output_path})")
            raise (Interrupted(message, code) if code else UserError(message)) from None
        if stop.requested:
            raise Interrupted(f"{stop.name} received: {label} was interrupted in cell {exc.exec_count} "
                              f"({exc.ename}); the executed notebook up to then is {output_path}",
                              code) from None
        message = (f"{label} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} (the traceback is "
                   f"in the executed notebook {output_path})")
        raise (Interrupted(message, code) if code else UserError(message)) from None
    except (DiskFull, Interrupted):
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(output_path) from None
        raise
    except Exception as exc:  # the kernel died (killed after a second signal), papermill gave up
        if not stop.requested:
            raise
        raise Interrupted(f"{stop.name} received twice: {label} was stopped at once ({type(exc).__name__}); "
                          f"the executed notebook up to then is {output_path}", exit_code(stop.signum)) from None
    finally:
        _shutdown_kernel(km)
        runlock.release(run_dir)


def _signal_code(evalue: str) -> int | None:
    """128 + n for a cell that ended with `SIGxxx received: ...` (tunekit.errors.Interrupted)."""
    import re
    import signal as _signal

    m = re.match(r"^(SIG[A-Z0-9]+) received", evalue or "")
    sig = getattr(_signal, m.group(1), None) if m else None
    return 128 + int(sig) if sig is not None else None


def _shutdown_kernel(km) -> None:
    """Stop the kernel we started (papermill leaves a kernel it was given running)."""
    try:
        if km.has_kernel:
            km.shutdown_kernel(now=False)
    except Exception:  # noqa: BLE001 - already dead, or not started: nothing left to stop
        pass
    try:
        km.cleanup_resources()
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------- py:percent pairing and outputs
_is_check_cell = nbclean.is_check_cell


def _read_py(path: Path):
    import jupytext

    return jupytext.read(path, fmt="py:percent")


def strip_outputs(nb) -> None:
    """Put a notebook into its committed form (no outputs; see tunekit.nbclean), in place."""
    nbclean.strip(nb)


_PARAMS_MARK = '# %% tags=["parameters"]\n'


def _parameters_span(text: str, name: str) -> tuple[int, int]:
    """Where the parameters cell's source lies in a py:percent text (start, end offsets)."""
    if _PARAMS_MARK not in text:
        raise UserError(f"{name}: no `{_PARAMS_MARK.strip()}` cell")
    start = text.index(_PARAMS_MARK) + len(_PARAMS_MARK)
    end = text.find("\n# %%", start)
    return start, (len(text) if end < 0 else end + 1)


def generated_parameters(nb: NotebookSpec) -> str:
    """The parameters cell source generated from the notebook's params model (`name: type = value  # help`)."""
    from .params import parameters_cell

    return parameters_cell(nb.params_model()) + "\n"


def sync_parameters(nb: NotebookSpec) -> bool:
    """Write the generated parameters cell into the .py twin; True if it changed."""
    from .atomic import write_text

    text = nb.py.read_text(encoding="utf-8")
    start, end = _parameters_span(text, nb.py.name)
    new = text[:start] + generated_parameters(nb) + "\n" + text[end:].lstrip("\n")
    if new == text:
        return False
    write_text(nb.py, new)
    return True


def sync(nb: NotebookSpec) -> bool:
    """Regenerate the .py's parameters cell, then the .ipynb from the .py (keeping the check cells'
    references); True if anything changed."""
    import jupytext
    import nbformat

    params_changed = sync_parameters(nb)
    new = _read_py(nb.py)
    if nb.ipynb.exists():
        old = nbformat.read(nb.ipynb, as_version=4)
        new = jupytext.combine.combine_inputs_with_outputs(new, old, fmt="py:percent")
        # The references live in the check cells' metadata, which the .py does not carry.
        refs = [nbclean.reference(c) for c in old.cells if _is_check_cell(c)]
        for cell, ref in zip([c for c in new.cells if _is_check_cell(c)], refs):
            if ref is not None:
                nbclean.set_reference(cell, ref)
    strip_outputs(new)
    text = nbformat.writes(new) + "\n"
    if nb.ipynb.exists() and nb.ipynb.read_text(encoding="utf-8") == text:
        return params_changed
    from .atomic import write_text

    write_text(nb.ipynb, text)
    return True


def check(nb: NotebookSpec) -> list[str]:
    """Problems with a notebook pair as git would commit it: drift from the .py, outputs that would be
    committed, a missing reference.

    Outputs a JupyterLab session saved into the working file are no problem where the git filter
    strips them (`make setup` installs it); without the filter they are, and so are outputs in the
    staged (committed) version.
    """
    import nbformat

    problems = []
    if not nb.py.exists() or not nb.ipynb.exists():
        return [f"{nb.name}: both {nb.py.name} and {nb.ipynb.name} must exist (run `make sync-notebooks`)"]
    text = nb.py.read_text(encoding="utf-8")
    start, end = _parameters_span(text, nb.py.name)
    if text[start:end].strip() != generated_parameters(nb).strip():
        problems.append(f"{nb.py.name}: the parameters cell differs from what "
                        f"{nb.params_class.split(':')[1]} declares (run `make sync-notebooks`)")
    want = [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ())))
            for c in _read_py(nb.py).cells]
    on_disk = nbformat.read(nb.ipynb, as_version=4)
    have_nb = nbclean.stripped_copy(on_disk)
    have = [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in have_nb.cells]
    if want != have:
        first = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
        problems.append(f"{nb.ipynb.name}: cell {first + 1} differs from {nb.py.name} "
                        "(edit the .py, then run `make sync-notebooks`)")
    code = [c for c in have_nb.cells if c.cell_type == "code"]
    if not code or "parameters" not in code[0].metadata.get("tags", []):
        problems.append(f"{nb.ipynb.name}: the first code cell must be tagged `parameters`")
    with_outputs = nbclean.has_outputs(on_disk)
    if with_outputs and not nbclean.git_filter_active(nb.ipynb):
        problems.append(f"{nb.ipynb.name}: cells {', '.join(map(str, with_outputs[:5]))} carry outputs and "
                        "no git filter strips them (run `make setup` to install it, or `make sync-notebooks`)")
    staged = nbclean.committed_text(nb.ipynb)
    if staged is not None and nbclean.has_outputs(nbformat.reads(staged, as_version=4)):
        problems.append(f"{nb.ipynb.name}: the version staged in git carries outputs (run `make setup`, "
                        f"then `git add {nb.ipynb.name}` again)")
    checks = [c for c in code if _is_check_cell(c)]
    if not checks:
        problems.append(f"{nb.ipynb.name}: no `# {CHECK_MARK}` summary cell")
    elif not all(nbclean.reference(c) for c in checks):
        problems.append(f"{nb.ipynb.name}: a {CHECK_MARK} cell has no stored reference, so the tests would "
                        f"check nothing (run `tunekit notebooks refresh {nb.name}`)")
    return problems


# ---------------------------------------------------------------- the demo chain and the references
@dataclass(frozen=True)
class Step:
    """One step of the chain: a notebook and a function from earlier run dirs to its parameters."""

    notebook: str
    params: Callable[[dict[str, Path]], dict[str, Any]]


def _stage_dir(done: dict[str, Path], stage: str) -> str:
    return str(done[stage]) if stage in done else ""


# The demo chain (`make demo`), which is also what the test suite executes: every notebook once,
# later steps taking earlier run directories as parameters exactly as a user would chain them.
# Only those links are given: every other parameter is the notebook's own default (the tiny CPU
# configuration), so the demo shows exactly what a person gets from Run All. The check cells'
# references are what each notebook prints in this chain.
DEMO: list[Step] = [
    Step("10_inspect_data", lambda done: {}),
    Step("21_convert_hf_to_nemo", lambda done: {}),
    Step("20_convert_nemo_to_hf", lambda done: {"src": _stage_dir(done, "convert_hf_to_nemo")}),
    Step("30_sft", lambda done: {}),
    Step("40_dpo", lambda done: {"init": _stage_dir(done, "sft")}),
    Step("50_evaluate", lambda done: {"models": ["tiny"] + [str(done[s]) for s in ("sft", "dpo") if s in done]}),
    # Its defaults (every sft, dpo and evaluate run under the runs root) compare the runs above.
    Step("60_compare_runs", lambda done: {}),
]


def run_chain(run_name: str, log: Callable[[str], None] = print, watch=None) -> dict[str, Path]:
    """Execute every built notebook of DEMO once, in order, into `<runs>/<stage>/<run_name>/`; {stage: run_dir}.

    `watch(index, total, notebook)`, if given, returns a text stream that receives the notebook's
    output while it runs (what `tunekit demo` turns into its progress display).
    """
    done: dict[str, Path] = {}
    # One thread per kernel: CPU matmul results depend on the thread count, and the tiny model gains
    # nothing from more, so the chain prints the same numbers (its references) on every machine.
    old_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        _run_steps(run_name, done, log, watch)
    finally:
        if old_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_threads
    return done


def _run_steps(run_name: str, done: dict[str, Path], log: Callable[[str], None], watch) -> None:
    import time

    built = [s for s in DEMO if spec(s.notebook).exists()]
    for step in DEMO:
        nb = spec(step.notebook)
        if not nb.exists():
            log(f"[demo] {nb.name}: skipped (this stage is not built yet)")
            continue
        params = {k: v for k, v in step.params(done).items() if v not in ("", None)}
        params["run_name"] = run_name
        log(f"[demo] {nb.name}: running ...")
        t0 = time.time()
        stream = watch(built.index(step) + 1, len(built), nb) if watch else None
        done[nb.stage] = run_notebook(nb.name, params, source=f"demo step {nb.name}", stdout=stream)
        log(f"[demo] {nb.name}: done in {time.time() - t0:.0f} s -> {done[nb.stage]}")


def check_outputs(ipynb: Path) -> list[list[dict[str, Any]]]:
    """The outputs of each `# NBVAL_CHECK_OUTPUT` cell of an executed notebook file, in order."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    return [[dict(o) for o in c.get("outputs", [])] for c in nb.cells if _is_check_cell(c)]


def references(ipynb: Path) -> list[list[dict[str, Any]] | None]:
    """The stored reference of each `# NBVAL_CHECK_OUTPUT` cell of a committed notebook, in order."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    return [nbclean.reference(c) for c in nb.cells if _is_check_cell(c)]


def refresh(names: list[str] | None = None) -> list[Path]:
    """Run the demo chain in a scratch folder and store its check-cell outputs as the references
    (in each check cell's metadata).

    Every notebook's reference is what it prints in the chain (the test suite runs the same chain),
    so refreshing one notebook runs the steps before it too. Returns the notebooks written.
    """
    import tempfile

    import nbformat

    wanted = [spec(n) for n in names] if names else [nb for nb in NOTEBOOKS if nb.exists()]
    for nb in wanted:
        sync(nb)
    with tempfile.TemporaryDirectory(prefix="tunekit-refresh-") as tmp:
        old_runs = os.environ.get("TUNEKIT_RUNS_DIR")
        os.environ["TUNEKIT_RUNS_DIR"] = tmp
        try:
            done = run_chain("demo-refresh")
            executed = {nb.name: check_outputs(done[nb.stage] / f"{nb.name}.ipynb") for nb in wanted}
        finally:
            if old_runs is None:
                os.environ.pop("TUNEKIT_RUNS_DIR", None)
            else:
                os.environ["TUNEKIT_RUNS_DIR"] = old_runs
    from .atomic import write_text

    for nb in wanted:
        committed = nbformat.read(nb.ipynb, as_version=4)
        for mine, outputs in zip([c for c in committed.cells if _is_check_cell(c)], executed[nb.name]):
            nbclean.set_reference(mine, outputs)
        strip_outputs(committed)
        write_text(nb.ipynb, nbformat.writes(committed) + "\n")
    return [nb.ipynb for nb in wanted]


# ---------------------------------------------------------------- CLI
def params_from_args(args) -> dict[str, Any]:
    """`-f FILE` then `-p NAME VALUE` pairs, unconverted (run_notebook converts them by type)."""
    from . import paramfile

    params = paramfile.load(resolve(args.file, Path.cwd())) if args.file else {}
    params.update({name: Text(value) for name, value in (args.param or [])})
    return params


def _cmd_run(args) -> int:
    import sys

    source = " + ".join(s for s in (args.file, "-p" if args.param else "") if s) or "parameters"
    # What the notebook prints (its periodic progress lines) appears here as it runs.
    out = run_notebook(args.notebook, params_from_args(args), source=source, stdout=sys.stdout)
    print(f"run directory: {out}")
    return 0


def _cmd_execute(args) -> int:
    from papermill.iorw import read_yaml_file

    # papermill's own reader, exactly as `papermill -f` (a job's params.yaml was validated and
    # written for it at submission).
    params = read_yaml_file(str(resolve(args.file, Path.cwd()))) if args.file else {}
    os.environ.setdefault("TUNEKIT_HEADLESS", "1")
    execute(resolve(args.input, Path.cwd()), resolve(args.output, Path.cwd()), params or {},
            kernel=args.kernel or ensure_kernel())
    print(f"executed notebook: {args.output}")
    return 0


def _cmd_sync(args) -> int:
    for nb in NOTEBOOKS:
        if nb.py.exists():
            print(f"{nb.name}: {'updated' if sync(nb) else 'in sync'}")
    return 0


def _cmd_check(args) -> int:
    problems = [p for nb in NOTEBOOKS if nb.py.exists() or nb.ipynb.exists() for p in check(nb)]
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


def _cmd_git_filter(args) -> int:
    root = repo_root()
    if not nbclean.in_git(root):
        print(f"{root} is not a git checkout: no filter to install")
        return 0
    if args.uninstall:
        nbclean.uninstall_git_filter(root)
        print("git filter removed: notebooks are committed as saved (outputs included)")
        return 0
    for line in nbclean.install_git_filter(root):
        print(f"git config {line}")
    print("notebook outputs are stripped on `git add` (.gitattributes: *.ipynb filter=nbstripout)")
    return 0


def _cmd_refresh(args) -> int:
    for path in refresh(args.notebooks or None):
        print(f"refreshed {path}")
    return 0


class _RunHelp(argparse.Action):
    """`tunekit notebooks run [NAME] --help`: the usual help, then NAME's parameters."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        name = getattr(namespace, "notebook", None)
        if not name:
            print("\n`tunekit notebooks run NAME --help` also lists NAME's parameters.")
            parser.exit()
        try:
            nb = spec(name)
        except UserError as exc:
            parser.exit(2, f"\nerror: {exc}\n")
        from .params import parameters_help

        print(f"\nparameters of {nb.name} (set with -p NAME VALUE or a -f params file; the defaults are "
              f"the tiny CPU run):\n{parameters_help(nb.params_model())}")
        parser.exit()


def register(subparsers) -> None:
    """Add `tunekit notebooks ...`."""
    from .cli import add_param_option

    p = subparsers.add_parser("notebooks", help="run, sync and check the kit's notebooks")
    sub = p.add_subparsers(dest="nb_command", metavar="ACTION", required=True)
    r = sub.add_parser("run", help="execute one notebook headless into its run directory", add_help=False)
    r.add_argument("-h", "--help", action=_RunHelp, help="show this help and NOTEBOOK's parameters, then exit")
    r.add_argument("notebook", help="name (30_sft), stage (sft) or path")
    r.add_argument("-f", "--file", help="YAML params file (papermill -f style)")
    add_param_option(r, "one parameter, repeatable, overrides -f; VALUE is read by the "
                     "parameter's type: text exactly as typed, numbers like 2e-5, true/false, "
                     "lists like [a, b]")
    r.set_defaults(func=_cmd_run)
    e = sub.add_parser("execute", help="execute any notebook file headless as a PBS job does (papermill "
                       "with atomic saves, the run's lock and stop signals passed to the kernel)")
    e.add_argument("input", help="the notebook to run")
    e.add_argument("output", help="the executed notebook to write (its folder is the run directory)")
    e.add_argument("-f", "--file", help="YAML params, read as `papermill -f` reads them")
    e.add_argument("-k", "--kernel", help=f"Jupyter kernel (default: {KERNEL})")
    e.set_defaults(func=_cmd_execute)
    s = sub.add_parser("sync", help="regenerate each .ipynb from its .py twin (keeps reference outputs)")
    s.set_defaults(func=_cmd_sync)
    c = sub.add_parser("check", help="check pairing, stray outputs and reference outputs")
    c.set_defaults(func=_cmd_check)
    g = sub.add_parser("git-filter", help="install the git filter that keeps notebook outputs out of git "
                                          "(`make setup` runs it)")
    g.add_argument("--uninstall", action="store_true", help="remove it instead")
    g.set_defaults(func=_cmd_git_filter)
    f = sub.add_parser("refresh", help="run the demo chain and store its summary-cell outputs as the references")
    f.add_argument("notebooks", nargs="*", help="names (default: every notebook)")
    f.set_defaults(func=_cmd_refresh)
