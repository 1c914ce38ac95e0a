"""Reading and writing the YAML params files that papermill receives with `-f`.

The loader matches papermill's (safe, dates stay strings) with one friendly difference: `2e-5`
is a float. Plain YAML 1.1 reads it as the string "2e-5", which the strict notebook parameters
would then reject; learning-rate files are full of such literals. The job writes the merged
values back with `safe_dump` (`2.0e-05`), so papermill in the job reads exactly the same values
that were validated before `qsub`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError

_FLOAT_RE = re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$")


class ParamsLoader(yaml.SafeLoader):
    """SafeLoader without timestamps (like papermill's) that reads `1e-5` as a float."""


class ParamsDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string the loader would read as something else (`'2e-5'`)."""


for _cls in (ParamsLoader, ParamsDumper):
    _cls.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def loads(text: str, source: str) -> dict[str, Any]:
    """Parse a params mapping from YAML text; `source` names it in errors."""
    try:
        data = yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise UserError(f"{source}: a params file must be a YAML mapping of parameter: value")
    return data


def load(path: str | Path) -> dict[str, Any]:
    """Read a params file (YAML mapping of notebook parameter -> value)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: params file not found")
    return loads(p.read_text(encoding="utf-8"), str(path))


def parse_value(text: str) -> Any:
    """One `-p NAME VALUE` value, read as YAML (`3` is an int, `true` a bool, `2e-5` a float)."""
    try:
        return yaml.load(text, Loader=ParamsLoader)  # noqa: S506
    except yaml.YAMLError:
        return text  # not YAML: the raw string (e.g. a path with a colon and space)


def dumps(params: dict[str, Any], header: str = "") -> str:
    """YAML text papermill reads back to the same values (a comment header first, if given)."""
    body = yaml.dump(params, Dumper=ParamsDumper, allow_unicode=True, sort_keys=False,
                     default_flow_style=False)
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    return "\n".join(lines + [body])
