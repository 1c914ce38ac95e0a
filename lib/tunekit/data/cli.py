"""`tunekit data ...`: validate data folders and render tokenised examples.

    tunekit data validate DATA_DIR [--data-version V]      exit 0 clean, 1 warnings, 2 errors
    tunekit data render FILE.jsonl --tokenizer DIR [--kind sft|dpo] [--limit N] [--pretty]

Import-light: numpy/transformers load inside the handlers.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import UserError


def _data_files(target: Path, version: str | None):
    """Entries to validate: one file (of any type), a version folder, or data_dir + version."""
    from .files import Entry, scan_version
    from .schema import kind_of

    if os.path.lexists(target) and not target.is_dir():
        return [Entry(target, kind_of(target))]
    root = target / version if version else target
    if not root.is_dir():
        raise UserError(f"{root}: folder not found (pass DATA_DIR and --data-version, or a version folder)")
    found = scan_version(root)
    if not any(not e.ignored for e in found):
        versions = sorted(p.name for p in root.iterdir()
                          if (p / "tuning").is_dir() or (p / "preference").is_dir())
        hint = f" (data versions here: {', '.join(versions)}; pass --data-version)" if versions else ""
        raise UserError(f"{root}: no tuning/train/*.jsonl or preference/train/*.jsonl files{hint}")
    return found


def _cmd_validate(args) -> int:
    from .validate import DuplicateIndex, validate_entry

    def show(problem) -> None:  # streamed: each problem appears as soon as it is found
        print(problem, flush=True)

    reports, index = [], DuplicateIndex()
    for entry in _data_files(Path(args.data_dir), args.data_version):
        r = validate_entry(entry, index, show)
        hidden = r.errors + r.warnings - len(r.problems)
        if hidden > 0:
            print(f"{r.path}: ... {hidden} more problem(s) not shown", flush=True)
        reports.append(r)
    print()
    print(f"{'file':<50} {'kind':<4} {'records':>8} {'kept':>8} {'skipped':>8} {'warnings':>8} {'blank':>6}")
    for r in reports:
        print(f"{r.path:<50} {r.kind:<4} {r.records:>8} {r.kept:>8} {r.skipped:>8} {r.warnings:>8} {r.blank:>6}"
              + ("  (file not read)" if r.file_errors else ""))
        for reason, n in sorted(r.skipped_by_reason.items()):
            print(f"    {'error' if reason in FILE_REASONS else 'skipped'} {n:>6}  {reason}")
        for reason, n in sorted(r.warnings_by_reason.items()):
            print(f"    warning {n:>6}  {reason}")
    errors, warnings = sum(r.errors for r in reports), sum(r.warnings for r in reports)
    print(f"{len(reports)} file(s): {errors} error(s), {warnings} warning(s)")
    if errors:
        return 2
    return 1 if warnings else 0


FILE_REASONS = ("file not readable", "read failed")


def _cmd_render(args) -> int:
    from . import encode, render
    from .tokenizer import load_tokenizer
    from .config import resolve_tokenizer
    from .schema import FileReport, kind_of, read_records

    from .files import refusal

    path = Path(args.file)
    why = refusal(path)
    if why:
        raise UserError(f"{path}: {why}")
    kind = args.kind or kind_of(path)
    tok = load_tokenizer(resolve_tokenizer(args.tokenizer), full=True)
    info = encode.probe(tok)
    report = FileReport(str(path), kind)
    shown = 0
    for n, rec in read_records(path, kind, report):
        if args.limit and shown >= args.limit:
            break
        if kind == "sft":
            ids, mask = encode.sft_ids(rec["messages"], tok, info, args.style)
            if args.pretty:
                print(f"--- {path}:{n}\n{render.marked_text(ids, mask, tok)}")
            else:
                print(json.dumps({"line": n, "input_ids": ids, "loss_mask": mask}))
        else:
            prompt, chosen, rejected = encode.dpo_ids(rec, tok, info, args.style, args.dpo_append_eos)
            if args.pretty:
                resp = lambda full: full[len(prompt):]  # noqa: E731
                print(f"--- {path}:{n}\n{render.pair_text(prompt, resp(chosen), resp(rejected), tok)}")
            else:
                print(json.dumps({"line": n, "prompt_ids": prompt, "chosen_ids": chosen,
                                  "rejected_ids": rejected}))
        shown += 1
    for p in report.problems:
        print(p, file=sys.stderr)
    return 2 if report.skipped else 0


def register(subparsers) -> None:
    """Add `tunekit data validate|render`."""
    p = subparsers.add_parser("data", help="validate training data and render tokenised examples")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    v = sub.add_parser("validate", help="check every line of the SFT/DPO files (exit 0 clean, "
                                        "1 warnings only, 2 errors)")
    v.add_argument("data_dir", help="data dir (with --data-version), a version folder, or one .jsonl")
    v.add_argument("--data-version", help="subfolder of DATA_DIR, e.g. tuning_data20251105")
    v.set_defaults(func=_cmd_validate)
    r = sub.add_parser("render", help="print token ids and loss masks of records, one JSON per line")
    r.add_argument("file", help="a .jsonl file in the official SFT or DPO format")
    r.add_argument("--tokenizer", required=True, help="'tiny', 'llmjp', an HF model/tokenizer dir or a run dir")
    r.add_argument("--kind", choices=("sft", "dpo"), help="default: from the folder (tuning/preference)")
    r.add_argument("--limit", type=int, default=0, help="render at most N records (0 = all)")
    r.add_argument("--pretty", action="store_true", help="human view: trained tokens in ⟦ ⟧")
    r.add_argument("--style", choices=("kit", "official"), default="kit",
                   help="token semantics (see tunekit/data/README.md)")
    r.add_argument("--dpo-append-eos", action="store_true", help="append eos to DPO responses")
    r.set_defaults(func=_cmd_render)
