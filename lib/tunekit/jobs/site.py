"""Site defaults for job scripts (modules, open-file limit, ...) from `job_templates/site.yaml`.

The file holds what is true of the cluster rather than of one job, so an ABCI software update
means editing one YAML file, not the template or the code. Every value can be overridden per job.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..paths import repo_root


def templates_dir() -> Path:
    """The `job_templates/` folder of this checkout."""
    return repo_root() / "job_templates"


@dataclass(frozen=True)
class Site:
    """Cluster-wide job defaults."""

    modules: tuple[str, ...] = ()
    nofile: int = 65536
    local_hf_home: bool = True
    template: str = "notebook.pbs.jinja"


def load_site(path: Path | None = None) -> Site:
    """Read `job_templates/site.yaml` (missing file = built-in defaults)."""
    from .. import paramfile

    path = path or templates_dir() / "site.yaml"
    if not path.exists():
        return Site()
    data = paramfile.load(path)
    known = set(_TYPES)
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(known))})")
    values = _typed(data, path)
    modules = values.get("modules") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise UserError(f"{path}: modules must be a list of module names")
    nofile = values.get("nofile", 65536)
    if not isinstance(nofile, int) or nofile < 1024:
        raise UserError(f"{path}: nofile must be a whole number >= 1024 (got {nofile!r})")
    return Site(modules=tuple(modules), nofile=nofile,
                local_hf_home=values.get("local_hf_home", True),
                template=values.get("template", "notebook.pbs.jinja"))


_TYPES = {"modules": list[str], "nofile": int, "local_hf_home": bool, "template": str}


def _typed(data: dict, path: Path) -> dict:
    """site.yaml values converted by the key's type, with the same rules as notebook parameters."""
    from ..values import ValueProblem, convert

    out = {}
    for key, value in data.items():
        try:
            out[key] = convert(_TYPES[key], value)
        except ValueProblem as exc:
            raise UserError(f"{path}: {key}: {exc}") from None
    return out
