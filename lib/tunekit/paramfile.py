"""Reading the params files people write, and writing the one papermill reads in a job.

Reading (`load`, `loads`): YAML syntax, but no YAML 1.1 typing. An unquoted scalar stays text
(`tunekit.values.Text`) until `tunekit.values.convert_params` converts it by the type the notebook
declares, exactly as a `-p NAME VALUE` value is; a quoted scalar is a string. So `run_name: 0100`
is the string '0100' and `lr: 2e-5` the float 2e-05, in a file and on the command line alike.

Writing (`dumps`): the job's params.yaml holds validated, typed values and is read by papermill's
own loader (YAML 1.1 without timestamps). The dumper quotes every string that loader would read
as something else (`'0100'`, `'yes'`, `'2e-5'`), so the job's notebook receives exactly the
values that were validated before `qsub`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .values import Text, TextLoader

# Strings such as "2e-5" that some YAML readers take for floats: always quoted when written.
_FLOAT_RE = re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$")


class ParamsDumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings a reader could take for floats (`'2e-5'`)."""


ParamsDumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
ParamsDumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _represent_str(dumper: ParamsDumper, data: str) -> yaml.ScalarNode:
    # Plain, single-quoted and block styles fold or normalise line breaks (\n, \r, \x85,
    # \u2028) and drop a BOM; only the double-quoted style escapes every such character.
    if not data.isprintable():
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    return dumper.represent_str(data)


ParamsDumper.add_representer(str, _represent_str)


def _where(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"{source}:{mark.line + 1}" if mark else source


def loads(text: str, source: str) -> dict[str, Any]:
    """Parse a params mapping from YAML text (values unconverted); `source` names it in errors."""
    try:
        data = yaml.load(text, Loader=TextLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise UserError(f"{_where(exc, source)}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None or (isinstance(data, Text) and not data.strip()):
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise UserError(f"{source}: a params file must be a YAML mapping of parameter: value")
    return {str(k): v for k, v in data.items()}


def load(path: str | Path) -> dict[str, Any]:
    """Read a params file (YAML mapping of notebook parameter -> unconverted value)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: params file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read this params file ({exc}) (save it as UTF-8 text)") from None
    return loads(text, str(path))


def dumps(params: dict[str, Any], header: str = "") -> str:
    """YAML text papermill reads back to the same values (a comment header first, if given)."""
    body = yaml.dump(params, Dumper=ParamsDumper, allow_unicode=True, sort_keys=False,
                     default_flow_style=False)
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    return "\n".join(lines + [body])
