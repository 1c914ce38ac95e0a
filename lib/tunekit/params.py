"""Typed notebook parameters: the second cell of every notebook turns the `parameters` cell into a
frozen, validated config.

papermill injects values but only *warns* about unknown names and never checks types, so each
notebook declares a pydantic model whose fields mirror its `parameters` cell exactly (a test checks
names, types and defaults agree), and `from_globals` rejects ill-typed values with one sentence
per problem. Unknown names are rejected before execution by `tunekit.notebooks.check_params`.
Values typed as text (`-p`, params files) are converted by the field's declared type first, by
the one parser every entry point shares (`tunekit.values`).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UserError
from .values import convert_params


class NotebookParams(BaseModel):
    """Base class for a notebook's parameters: strict types, no extra keys, immutable."""

    # strict: "3" is not an int, 1 is not a bool; ints are still accepted for float fields.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Fields that may change between a run and its resumption (e.g. a new walltime deadline).
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_globals(cls, namespace: Mapping[str, Any]):
        """Build the config from a notebook's globals(): each field's value, or its default."""
        values = {name: namespace[name] for name in cls.model_fields if name in namespace}
        return cls.parse(values, source="notebook parameters")

    @classmethod
    def convert(cls, values: Mapping[str, Any], source: str = "parameters") -> dict[str, Any]:
        """Typed-in text (CLI -p, params files) converted by each field's type (tunekit.values)."""
        return convert_params(cls, values, source)

    @classmethod
    def parse(cls, values: Mapping[str, Any], source: str = "parameters"):
        """Validate a mapping (YAML params file, CLI -p values) into the config or raise UserError."""
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            known = ", ".join(sorted(cls.model_fields))
            raise UserError(f"{source}: unknown parameter(s) {', '.join(unknown)} (known: {known})")
        values = cls.convert(values, source)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, source)) from None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (what params.json stores)."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """A short stable hash of the config (used in automatic run names)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per bad parameter: `source: parameter 'x': what is wrong (got value)`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = err.get("input")
        got_s = repr(got)
        if len(got_s) > 60:
            got_s = got_s[:57] + "..."
        lines.append(f"{source}: parameter '{loc}': {err['msg']} (got {got_s})")
    return "\n".join(lines)
