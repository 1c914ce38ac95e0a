"""CLI subcommands of tunekit.model: `tunekit fixtures tiny|llmjp-tokenizer`."""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    """Add this area's subcommands to the `tunekit` parser."""
    p = subparsers.add_parser("fixtures", help="build the local tiny model/tokenizer and the llm-jp HF tokenizer")
    sub = p.add_subparsers(dest="fixtures_command", metavar="KIND", required=True)

    tiny = sub.add_parser("tiny", help="train the tiny tokenizer on the sample data and write it with a "
                                       "random tiny LlamaForCausalLM into OUTDIR (deterministic)")
    tiny.add_argument("outdir", type=Path, metavar="OUTDIR")
    tiny.add_argument("--seed", type=int, default=None, help="model init seed (default: the fixture's)")
    tiny.add_argument("--force", action="store_true", help="replace OUTDIR if it exists")
    tiny.set_defaults(func=_tiny)

    llmjp = sub.add_parser("llmjp-tokenizer", help="convert an llm-jp SentencePiece .model into an HF fast "
                                                   "tokenizer directory (competition token names, kit chat template)")
    llmjp.add_argument("model", type=Path, metavar="MODEL", help="the SentencePiece .model file")
    llmjp.add_argument("outdir", type=Path, metavar="OUTDIR")
    llmjp.add_argument("--force", action="store_true", help="replace OUTDIR if it exists")
    llmjp.set_defaults(func=_llmjp)


def _target(outdir: Path, force: bool) -> Path:
    from ..errors import UserError
    from ..paths import resolve

    # A path typed on the command line is relative to the shell's directory, as users expect.
    out = resolve(outdir, base=Path.cwd())
    if out.exists() and not force:
        raise UserError(f"{out}: already exists (pass --force to replace it)")
    return out


def _tiny(args) -> int:
    from ..atomic import atomic_dir
    from . import fixtures

    out = _target(args.outdir, args.force)
    seed = fixtures.TINY_SEED if args.seed is None else args.seed
    with atomic_dir(out, overwrite=args.force) as tmp:
        fixtures.build_tiny(tmp, seed=seed)
    print(f"tiny tokenizer + model (seed {seed}) written to {out}")
    return 0


def _llmjp(args) -> int:
    from ..atomic import atomic_dir
    from ..errors import UserError
    from ..paths import resolve
    from . import fixtures

    src = resolve(args.model, base=Path.cwd())
    out = _target(args.outdir, args.force)
    if not src.is_file():  # before creating OUTDIR
        raise UserError(f"{src}: SentencePiece model not found (pass the llm-jp tokenizer .model file)")
    with atomic_dir(out, overwrite=args.force) as tmp:
        fixtures.build_llmjp_tokenizer(src, tmp)
    print(f"HF tokenizer from {src} written to {out}")
    return 0
