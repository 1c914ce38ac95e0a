"""Render a job plan into a PBS job script with Jinja2, every value quoted for bash by default.

Safety by construction rather than by care: the Jinja environment's `finalize` hook passes every
`{{ ... }}` result through `shlex.quote`, so a run name like `x'; rm -rf ~ #` or `$(curl ...)`
becomes one inert shell word wherever it appears. The template only uses values as whole words
(never inside double quotes, where single quotes are literal) and puts them into shell variables
once at the top. `#PBS` directive values, which PBS parses without a shell, are validated to plain
characters in `spec.py` and re-checked here.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from .site import templates_dir
from .spec import JobPlan

_DIRECTIVE_SAFE = re.compile(r"^[A-Za-z0-9_.:=+/-]+$")


def shell_word(value: Any) -> str:
    """One bash word that expands to exactly `value` (ints and strings only)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Path)):
        raise TypeError(f"refusing to render {type(value).__name__} {value!r} into a shell script")
    text = str(value)
    if "\x00" in text:
        raise ValueError("refusing to render a NUL byte into a shell script")
    return shlex.quote(text)


def _environment(folder: Path):
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,  # a missing value is an error, never an empty word
        finalize=shell_word,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def template_context(plan: JobPlan, points: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The values the template sees (all plain strings, ints and lists of them).

    `points` (a sweep, tunekit.jobs.sweep): one dict per array index with that point's index,
    run_dir, job_dir, notebook_out, params_file and job_name; `plan` gives everything they share.
    """
    directives = {"group": plan.group, "queue": plan.queue, "nodes": str(plan.nodes),
                  "walltime": plan.walltime, "job_name": plan.job_name}
    for name, value in directives.items():
        if not _DIRECTIVE_SAFE.match(value):  # spec.py guarantees this; PBS has no shell quoting
            raise ValueError(f"#PBS {name} value {value!r} is not plain text")
    threads = max(1, plan.resource.cpus_per_node // max(1, plan.nproc_per_node))
    return {
        **directives,
        "nodes_n": plan.nodes,
        "notebook": plan.notebook.name,
        "stage": plan.stage,
        "repo": str(plan.repo),
        "runs_root": str(plan.runs_root),
        "cache_dir": plan.cache_dir,
        "run_dir": str(plan.run_dir),
        "job_dir": str(plan.job_dir),
        "submission": plan.submission,
        "params_file": str(plan.params_path),
        "notebook_in": str(plan.notebook.ipynb),
        "notebook_out": str(plan.output_notebook),
        "modules": list(plan.modules),
        "activation": {"kind": plan.activation.kind, "path": plan.activation.path,
                       "conda_sh": plan.activation.conda_sh},
        "env": [list(pair) for pair in plan.env],
        "nofile": plan.site.nofile,
        "local_hf_home": plan.site.local_hf_home,
        "walltime_s": plan.walltime_s,
        "launcher": plan.launcher,
        "nproc_per_node": plan.nproc_per_node,
        "world_size": plan.world_size,
        "omp_threads": min(threads, 16),
        "gpus_per_node": plan.resource.gpus_per_node,
        "points": list(points or []),
    }


def render_script(plan: JobPlan, template: str | None = None, folder: Path | None = None,
                  points: list[dict[str, Any]] | None = None) -> str:
    """The job script for `plan` from `job_templates/<template>` (default: the site's template)."""
    env = _environment(folder or templates_dir())
    return env.get_template(template or plan.site.template).render(**template_context(plan, points))
