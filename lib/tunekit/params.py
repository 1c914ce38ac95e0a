"""Typed notebook parameters, declared once: the second cell of every notebook turns the
`parameters` cell into a frozen, validated config.

A notebook's parameters model is composed of shared groups (`RunParams` here, the data groups in
`tunekit.data.params`, the training groups in `tunekit.train.params`); each field carries its type,
its limits (`Literal` choices, `Field(ge=..)`), its default and its help text. The notebook's
`parameters` cell is generated from the model (`tunekit notebooks sync`, `parameters_cell`), so
the two cannot drift. papermill injects values but only *warns* about unknown names and never
checks types: `parse`/`from_globals` reject unknown names and bad values with one sentence per
problem, naming the parameter.
Values typed as text (`-p`, params files) are first converted by each field's declared type,
by the one parser every entry point shares (`tunekit.values`).
"""
from __future__ import annotations

import hashlib
import json
import typing
from typing import Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from .errors import UserError
from .values import convert_params


class NotebookParams(BaseModel):
    """Base class for a notebook's parameters: strict types, no extra keys, immutable."""

    # strict: "3" is not an int, 1 is not a bool; ints are still accepted for float fields.
    # validate_default: a default that breaks its own limits fails at import, not in a user's run.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    # Fields that may change between a run and its resumption (e.g. a new walltime deadline).
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset()
    # A short title printed above this group's fields in the generated parameters cell.
    SECTION: ClassVar[str] = ""

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
            raise UserError(f"{source}: unknown parameter(s) {unknown_names(unknown, cls.model_fields)} "
                            f"({len(cls.model_fields)} parameters exist; the notebook's parameters cell "
                            "lists them)")
        values = cls.convert(values, source)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, source, cls)) from None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (what params.json stores)."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """A short stable hash of the config (used in automatic run names)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def resume_diff(self, old: Mapping[str, Any]) -> list[str]:
        """`name: old -> new` for every recorded parameter that differs and may not change on resume."""
        new = self.to_dict()
        may_change = type(self).RESUME_MAY_CHANGE | {"run_name", "runs_dir"}
        names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in may_change)
        return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in names]


class RunParams(NotebookParams):
    """Where a notebook's run record goes (the last two parameters of every notebook)."""

    SECTION: ClassVar[str] = "run record"

    run_name: str = Field(
        "", description="run folder name (empty: automatic); the same name reopens (resumes) that run")
    runs_dir: str = Field("", description="runs root (empty: <repo>/runs)")

    @field_validator("run_name")
    @classmethod
    def _plain_folder_name(cls, value: str) -> str:
        # Checked here, where every entry point parses its parameters, before anything is created.
        from .runs import run_name_problem

        problem = run_name_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value


def stage_default(base: type[BaseModel], name: str, default: Any, help: str | None = None) -> FieldInfo:
    """The field `name` as `base` declares it (type, limits, help) with a stage's own default (and help).

    Use it in a stage's params class for a shared parameter whose tiny default differs per stage:
        max_seq_length: int = stage_default(DataParams, "max_seq_length", 256, "longest ...")
    """
    info = base.model_fields[name]
    extra: dict[str, Any] = {"description": help} if help else {}
    if isinstance(default, (dict, list)):
        value = json.loads(json.dumps(default))
        return FieldInfo.merge_field_infos(info, default_factory=lambda: json.loads(json.dumps(value)),
                                           **extra)
    return FieldInfo.merge_field_infos(info, default=default, **extra)


def cell_fields(cls: type[NotebookParams]) -> list[tuple[str, list[str]]]:
    """(section title, field names) in parameters-cell order.

    The class's own new fields come first, then each base group in the order the class lists its
    bases (a group's own bases before its own fields), e.g. `SFTParams(DataParams, TrainParams, ...)`.
    """
    seen: set[str] = set()
    out: list[tuple[str, list[str]]] = []

    def own(c) -> list[str]:
        return [n for n in c.__dict__.get("__annotations__", {}) if n in cls.model_fields]

    def walk(c) -> None:
        for b in c.__bases__:
            if isinstance(b, type) and issubclass(b, NotebookParams) and b is not NotebookParams:
                walk(b)
        names = [n for n in own(c) if n not in seen]
        seen.update(names)
        if names:
            out.append((c.__dict__.get("SECTION", ""), names))

    inherited = {n for b in cls.__mro__[1:] for n in b.__dict__.get("__annotations__", {})}
    first = [n for n in own(cls) if n not in inherited]
    seen.update(first)
    out.append(("", first))
    for b in cls.__bases__:
        if issubclass(b, NotebookParams) and b is not NotebookParams:
            walk(b)
    return [(title, names) for title, names in out if names]


def _literal(value: Any) -> str:
    """A Python literal for the parameters cell (double-quoted strings, as a person would type)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, BaseModel):
        return _literal(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def cell_type(annotation: Any) -> str:
    """The plain type name papermill shows for a field (`Literal["a", "b"]` -> str, dict[...] -> dict)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0]).__name__
    return (origin or annotation).__name__


def parameters_cell(cls: type[NotebookParams]) -> str:
    """The notebook's `parameters` cell source: `name: type = default  # help`, one per line."""
    lines: list[str] = []
    for title, names in cell_fields(cls):
        if title:
            lines.append(f"# --- {title}")
        for name in names:
            info = cls.model_fields[name]
            help_text = (info.description or "").strip()
            if not help_text or "=" in help_text or "\n" in help_text:
                raise ValueError(f"{cls.__name__}.{name}: the description must be one line without '=' "
                                 "(it becomes the papermill help comment)")
            default = info.get_default(call_default_factory=True)
            lines.append(f"{name}: {cell_type(info.annotation)} = {_literal(default)}  # {help_text}")
    return "\n".join(lines)


def parameters_help(cls: type[NotebookParams]) -> str:
    """A notebook's parameters as `--help` shows them: sections, then name, type, default and help."""
    rows: list[tuple[str, str, str, str]] = []
    for title, names in cell_fields(cls):
        if title:
            rows.append((f"--- {title}", "", "", ""))
        for name in names:
            info = cls.model_fields[name]
            rows.append((name, cell_type(info.annotation), _literal(info.get_default(call_default_factory=True)),
                         (info.description or "").strip()))
    width = max(len(r[0]) for r in rows if r[1])
    lines = []
    for name, kind, default, help_text in rows:
        if not kind:
            lines.append(f"  {name}")
            continue
        lines.append(f"  {name:<{width}}  {kind:<5} = {default}\n  {'':<{width}}  {help_text}")
    return "\n".join(lines)


# ------------------------------------------------------------------ error messages
# Names people bring from other trainers (HF Trainer, TRL, NeMo, the official kit's YAML) -> ours.
ALIASES = {
    "learning_rate": "lr", "min_learning_rate": "min_lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "max_epochs": "epochs", "beta": "ref_policy_kl_penalty", "dpo_beta": "ref_policy_kl_penalty",
    "loss_type": "preference_loss", "rpo_alpha": "sft_loss_weight", "batch_size": "global_batch_size",
    "train_batch_size": "global_batch_size", "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "global_batch_size", "max_length": "max_seq_length",
    "max_seq_len": "max_seq_length", "seq_length": "max_seq_length", "seq_len": "max_seq_length",
    "warmup": "warmup_steps", "max_grad_norm": "grad_clip", "gradient_clip_val": "grad_clip",
    "eval_steps": "val_interval", "val_check_interval": "val_interval", "save_steps": "save_interval",
    "gradient_checkpointing": "activation_checkpointing", "bf16": "precision", "dtype": "precision",
    "model_name_or_path": "model", "base_model": "model", "model_path": "model", "lora_r": "lora_rank",
    "adapter_dim": "lora_rank", "dataset": "datasets", "output_dir": "run_name", "peft_scheme": "peft",
}


def suggest(name: str, known) -> list[str]:
    """Up to three known parameter names a mistyped or foreign `name` probably meant."""
    import difflib

    known = list(known)
    out = []
    alias = ALIASES.get(name.lower())
    if alias in known:
        out.append(alias)
    if name.lower() == "beta" or name.lower().endswith("_beta"):
        out += [k for k in known if k.startswith("adam_beta") and k not in out]
    out += [k for k in difflib.get_close_matches(name, known, n=3, cutoff=0.6) if k not in out]
    return out[:3]


def unknown_names(unknown, known) -> str:
    """`a (did you mean b?), c` for the unknown names, with the closest known names."""
    parts = []
    for name in unknown:
        close = suggest(name, known)
        parts.append(f"{name} (did you mean {' or '.join(close)}?)" if close else name)
    return ", ".join(parts)


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _choices(cls: type[BaseModel] | None, loc: tuple) -> str | None:
    if cls is None or len(loc) != 1 or loc[0] not in cls.model_fields:
        return None
    ann = cls.model_fields[loc[0]].annotation
    if typing.get_origin(ann) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(ann))
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(exc: ValidationError, source: str, cls: type[BaseModel] | None = None) -> str:
    """One line per problem: `source: parameter 'x' must be ... (got value)`, or the cross-check's sentence."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        kind, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
        if kind == "value_error":
            text = msg.removeprefix("Value error, ")
            if not loc:  # a check across parameters: its own sentences, one per line
                lines.extend(f"{source}: {line}" for line in text.splitlines())
                continue
        elif kind == "literal_error" and _choices(cls, loc):
            text = f"must be one of {_choices(cls, loc)}"
        elif kind in _BOUNDS:
            key, op = _BOUNDS[kind]
            bound = ctx.get(key)
            text = f"must be {op} {int(bound) if isinstance(bound, float) and bound.is_integer() else bound}"
        else:
            text = msg.replace("Input should be", "must be")
        name = ".".join(str(p) for p in loc) or "<root>"
        lines.append(f"{source}: parameter '{name}' {text} (got {_shown(err.get('input'))})")
    return "\n".join(lines)
