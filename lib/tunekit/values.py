"""The one parser for parameter values a person types: `-p NAME VALUE`, params files, job files.

A value arrives either as text nobody has interpreted yet (`Text`: a command-line value, or an
unquoted scalar of a params file) or as a Python value (a notebook's globals, a quoted YAML
string, a list or mapping). `convert_params` turns text into the type the parameter declares in
its params model, and nothing else does, so every entry point reads a value the same way:

    str          the text exactly as typed: '0100', '0x10', 'team #1 runs', 'null', 'yes', '.inf'
    int          a Python integer literal: 100, -3, 1_000, 0x10 (not 0100, 1e3, true or 5000 digits)
    float        a Python int or float literal, finite: 2e-5, .5, 3 (not .inf, nan, 1e400)
    bool         true / false (also True, TRUE, False, FALSE); nothing else
    None         null / None / ~ (only where the type allows None)
    Literal      one of its choices, compared as text
    list / dict  YAML flow or JSON, e.g. [a, b] or {"math_drill": {"upsampling_factor": 2}};
                 each item converted by the declared item type
    Any          true/false, null, a plain decimal int or float, else the text

YAML 1.1 (what PyYAML and papermill use) reads `0100` as 64, `0x10` as 16, `yes` as True and
`2e-5` as a string; none of that applies here. Text that does not fit the type is refused with
one sentence per parameter, naming it and saying how to write the value.
"""
from __future__ import annotations

import ast
import math
from collections import abc
import re
import types
import typing
from typing import Any, Literal, Mapping, Union

from .errors import UserError

TRUE_WORDS = ("true", "True", "TRUE")
FALSE_WORDS = ("false", "False", "FALSE")
NULL_WORDS = ("null", "None", "~")
_DECIMAL_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
_DECIMAL_FLOAT = re.compile(r"[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?")


class Text(str):
    """A value as the person typed it, not yet converted (a `-p` value, an unquoted YAML scalar)."""

    __slots__ = ()


def _text_loader():
    import yaml

    class TextLoader(yaml.SafeLoader):
        """SafeLoader whose unquoted scalars stay `Text` (no implicit int/float/bool/null/date)."""

    TextLoader.yaml_implicit_resolvers = {}  # every plain scalar resolves to !!str ...

    def construct_str(loader, node):
        value = loader.construct_scalar(node)
        return Text(value) if node.style is None else value  # ... and unquoted ones stay Text

    TextLoader.add_constructor("tag:yaml.org,2002:str", construct_str)
    return TextLoader


TextLoader = _text_loader()


class ValueProblem(ValueError):
    """Text that does not fit the declared type; the message says how to write it."""


def convert_params(model, values: Mapping[str, Any], source: str = "parameters") -> dict[str, Any]:
    """Convert every value by its declared type in `model` (a pydantic model class); names the
    model does not declare are passed on unchanged (the model's own check reports them)."""
    fields = getattr(model, "model_fields", {})
    out, problems = {}, []
    for name, value in values.items():
        name = str(name)
        if name not in fields:
            out[name] = plain(value)
            continue
        try:
            out[name] = convert(fields[name].annotation, value)
        except ValueProblem as exc:
            problems.append(f"{source}: parameter '{name}': {exc}")
    if problems:
        raise UserError("\n".join(problems))
    return out


def convert(annotation: Any, value: Any) -> Any:
    """`value` as the declared type: Text is parsed (see the module docstring), other values are
    returned as they are (containers with their items converted); raises ValueProblem."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    base = origin or annotation  # list[str] -> list, and a bare `list` stays list
    if annotation is Any or annotation is object:
        return _untyped(value)
    if origin is typing.Annotated:
        return convert(args[0], value)
    if origin is Union or origin is types.UnionType:
        return _union(args, value)
    if origin is Literal:
        return _literal(args, value)
    if annotation is str and isinstance(value, str):
        return _exact_text(value)
    if isinstance(value, Text):
        if annotation is bool:
            return _bool(value)
        if annotation is int:
            return _int(value)
        if annotation is float:
            return _float(value)
        if annotation is type(None):
            if value in NULL_WORDS:
                return None
            raise ValueProblem(f"{_show(value)} is not empty (write null)")
        if _container(annotation):
            return convert(annotation, _flow(value))
        return _untyped(value)  # a type with its own validation (e.g. a pydantic model)
    if isinstance(value, (list, tuple)) and base in (list, tuple, set, frozenset):
        if base is tuple and args and args[-1] is not Ellipsis:
            return [convert(a, v) for a, v in zip(args, value)] + list(value[len(args):])
        item = args[0] if args else Any
        return [convert(item, v) for v in value]
    if isinstance(value, Mapping) and base in (dict, abc.Mapping):
        key_t, val_t = args if len(args) == 2 else (Any, Any)
        return {convert(key_t, k): convert(val_t, v) for k, v in value.items()}
    if isinstance(value, Mapping) and _is_model(annotation):
        fields = annotation.model_fields
        return {str(k): convert(fields[k].annotation, v) if k in fields else plain(v)
                for k, v in value.items()}
    return plain(value)


def plain(value: Any) -> Any:
    """A value with every unconverted Text resolved by the `Any` rule (JSON/YAML-safe)."""
    return _untyped(value)


# --------------------------------------------------------------------------- scalar rules
def _show(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


def _exact_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueProblem(f"the text holds {value[exc.start]!r} at character {exc.start + 1}, "
                           "which is not valid Unicode text and cannot be saved (remove it)") from None
    return str(value)


def _bool(text: str) -> bool:
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueProblem(f"{_show(text)} is neither true nor false (write true or false)")


def _literal_number(text: str) -> Any:
    """The Python number literal `text` (a sign allowed), or None if it is not one."""
    s = text.strip()
    if not s or len(s) > 400:  # longer is never a reasonable number (and int() has a digit limit)
        return None
    try:
        node = ast.parse(s, mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        inner, sign = node.operand, -1 if isinstance(node.op, ast.USub) else 1
    else:
        inner, sign = node, 1
    if not isinstance(inner, ast.Constant) or type(inner.value) not in (int, float):
        return None
    return sign * inner.value


def _int(text: str) -> int:
    value = _literal_number(text)
    if type(value) is int:
        return value
    hint = ""
    if re.fullmatch(r"[-+]?0[0-9_]+", text.strip()):
        hint = ": leading zeros are not allowed"
    elif len(text.strip()) > 400:
        hint = f": {len(text.strip())} characters is far beyond any sensible value"
    raise ValueProblem(f"{_show(text)} is not a whole number{hint} (write it like 100 or -1)")


def _float(text: str) -> float:
    value = _literal_number(text)
    if type(value) in (int, float):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
        raise ValueProblem(f"{_show(text)} is not a finite number (write it like 2e-5 or 0.1)")
    raise ValueProblem(f"{_show(text)} is not a number (write it like 2e-5 or 0.1)")


def _union(args: tuple, value: Any) -> Any:
    if isinstance(value, Text) and type(None) in args and value in NULL_WORDS:
        return None
    problems = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return convert(arg, value)
        except ValueProblem as exc:
            problems.append(str(exc))
    if value is None and type(None) in args:
        return None
    raise ValueProblem("; or ".join(problems) if problems else f"{_show(str(value))} does not fit")


def _literal(choices: tuple, value: Any) -> Any:
    if not isinstance(value, Text):
        return value
    for choice in choices:
        if value == str(choice) or (isinstance(choice, bool) and value in (TRUE_WORDS if choice else FALSE_WORDS)):
            return choice
    raise ValueProblem(f"{_show(value)} is not one of {', '.join(map(str, choices))}")


def _container(annotation: Any) -> bool:
    base = typing.get_origin(annotation) or annotation
    return base in (list, tuple, set, frozenset, dict, abc.Mapping) or _is_model(annotation)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "model_fields")


def _flow(text: str) -> Any:
    """A list or mapping written as YAML flow or JSON; scalars stay Text."""
    import yaml

    try:
        return yaml.load(text, Loader=TextLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueProblem(f"{_show(text)} is not a list or mapping "
                           f"({getattr(exc, 'problem', None) or exc}) "
                           "(write it like [a, b] or {\"name\": {\"key\": 1}})") from None


def _untyped(value: Any) -> Any:
    if isinstance(value, Text):
        text = str(value)
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        if text in NULL_WORDS:
            return None
        if _DECIMAL_INT.fullmatch(text):
            number = _literal_number(text)
            if type(number) is int:
                return number
        elif any(c.isdigit() for c in text) and _DECIMAL_FLOAT.fullmatch(text):
            number = _literal_number(text)
            if type(number) is float and math.isfinite(number):
                return number
        return text
    if isinstance(value, (list, tuple)):
        return [_untyped(v) for v in value]
    if isinstance(value, Mapping):
        return {_untyped(k): _untyped(v) for k, v in value.items()}
    return value
