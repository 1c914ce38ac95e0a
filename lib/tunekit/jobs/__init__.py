"""PBS jobs on ABCI: render a notebook into a job script, submit it (or a walltime chain), watch it.

    from tunekit.jobs import submit_job, job_status, wait_for_job, cancel_job
    sub = submit_job("30_sft", params_file="job_templates/params/llm-jp-4-8b/sft/full.yaml",
                     group="gaXXXXX", nodes=2, walltime="24:00:00", chain=3)
    job_status(sub.run_dir)

The CLI is `tunekit job submit|status|cancel`; docs/abci_jobs.md walks through it. A grid of
parameters as one PBS array job: `submit_sweep(SweepRequest(...))`, `sweep_status(name)`
(`tunekit sweep submit|status`, tunekit.jobs.sweep).
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "submit_job": "submit", "submit_plan": "submit", "job_status": "submit",
    "format_status": "submit", "wait_for_job": "submit", "cancel_job": "submit",
    "Submission": "submit", "JobRequest": "spec", "JobPlan": "spec", "plan_job": "spec",
    "render_script": "render", "submit_sweep": "sweep", "sweep_status": "sweep", "SweepRequest": "sweep",
    "parse_grid": "sweep",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy, so `import tunekit.jobs.node` inside a job does not pull in Jinja and pydantic.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
