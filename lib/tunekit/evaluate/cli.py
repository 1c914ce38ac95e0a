"""`tunekit eval score|generate` and `tunekit submission prepare|smoke-test|check-env`.

Kept import-light: torch, transformers and Math-Verify load inside the handlers.
"""
from __future__ import annotations

import json
from pathlib import Path


def _cmd_score(args) -> int:
    from .scoring import score_files

    report = score_files(args.pred, args.gold, scorer=args.scorer, out_path=args.output,
                         progress=not args.quiet)
    print(report.format_table())
    for line in report.problems:
        print(f"warning: {line}")
    if report.official_failures:
        print(f"warning: the official math-eval would STOP on this prediction file and score nothing "
              f"({len(report.official_failures)} cause(s); the kit counted those problems wrong):")
        for line in report.official_failures[:10]:
            print(f"  {line}")
    if report.missing:
        print(f"warning: {len(report.missing)} gold problem(s) without a prediction count as wrong: "
              f"{', '.join(report.missing[:10])}{' ...' if len(report.missing) > 10 else ''}")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _cmd_generate(args) -> int:
    from ..paths import resolve
    from .evaluation import predict
    from .generate import Decoding
    from .records import load_gold, prediction_record, write_jsonl

    gold = load_gold(resolve(args.eval_set, Path.cwd()))
    if args.max_problems:
        gold = gold[: args.max_problems]
    decoding = Decoding(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        n_samples=args.n_samples, batch_size=args.batch_size, seed=args.seed)
    chosen, gen, _ = predict(args.model, gold, style=args.prompt_style, decoding=decoding,
                             backend=args.backend)
    out = write_jsonl(args.output, [prediction_record(g, o) for g, o in zip(gold, chosen)])
    print(f"wrote {len(gold)} predictions to {out} ({gen.backend}, {gen.new_tokens} new tokens, "
          f"{gen.tokens_per_second:.1f} tokens/s)")
    if decoding.n_samples > 1:
        samples = out.with_suffix(".samples.jsonl")
        write_jsonl(samples, [{"id": g["id"], "sample": i, "output": o}
                              for g, outs in zip(gold, gen.outputs) for i, o in enumerate(outs)])
        print(f"wrote all {decoding.n_samples} samples per problem to {samples}")
    return 0


def _cmd_prepare(args) -> int:
    from ..paths import repo_root
    from .records import eval_files
    from .submission import prepare_submission, smoke_test

    info = prepare_submission(args.model, args.output, overwrite=args.overwrite,
                              skip_compat_check=args.skip_compat_check)
    print(f"submission folder: {info['folder']} ({info['bytes'] / 1e6:.1f} MB): {', '.join(info['files'])}")
    if not args.no_smoke_test:
        problems = args.input or str(repo_root() / "datasets" / "sample" / "eval")
        first = eval_files(problems)[0]
        out = Path(info["folder"]).parent / f"{Path(info['folder']).name}.smoke.jsonl"
        result = smoke_test(info["folder"], first, out, limit=args.limit, backend=args.backend)
        print(f"smoke test: {json.dumps(result, ensure_ascii=False)} -> {out}")
    return 0


def _cmd_smoke(args) -> int:
    from .submission import smoke_test

    result = smoke_test(args.model, args.input, args.output, max_new_tokens=args.max_new_tokens,
                        backend=args.backend, limit=args.limit)
    print(json.dumps(result, ensure_ascii=False, indent=2))
    if result["keys_the_scorer_rejects"]:
        print("warning: the input records carry keys the official scorer rejects in predictions: "
              + ", ".join(result["keys_the_scorer_rejects"]))
    return 0


def _cmd_check_env(args) -> int:
    import os

    from .gpu_env import check_cuda_visible_devices

    check_cuda_visible_devices()
    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}: fine for vLLM")
    return 0


def _add_decoding(p) -> None:
    p.add_argument("--prompt-style", default="official", help="official (answer only) or cot_boxed")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--n-samples", type=int, default=1, help="answers per problem (majority vote)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="auto | transformers | vllm")


def register(subparsers) -> None:
    """Add `tunekit eval ...` and `tunekit submission ...`."""
    ev = subparsers.add_parser("eval", help="score predictions / generate answers (competition format)")
    sub = ev.add_subparsers(dest="eval_command", metavar="ACTION", required=True)
    s = sub.add_parser("score", help="score PRED.jsonl against GOLD.jsonl like the official math-eval")
    s.add_argument("pred")
    s.add_argument("gold", help="gold JSONL file or folder of them")
    s.add_argument("-o", "--output", help="write the result JSON here")
    s.add_argument("--scorer", default="auto", help="auto (official if installed) | tunekit | official")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_score)
    g = sub.add_parser("generate", help="answer an eval set with a model, write competition-format predictions")
    g.add_argument("model", help='"tiny", an HF model dir, or a run dir')
    g.add_argument("eval_set", help="gold JSONL file or folder")
    g.add_argument("-o", "--output", required=True, help="predictions JSONL to write")
    g.add_argument("--max-problems", type=int, default=0, help="only the first N problems (0 = all)")
    _add_decoding(g)
    g.set_defaults(func=_cmd_generate)

    sb = subparsers.add_parser("submission", help="prepare and smoke-test a submission model folder")
    ssub = sb.add_subparsers(dest="submission_command", metavar="ACTION", required=True)
    p = ssub.add_parser("prepare", help="copy a model into a submission-ready HF folder, check and smoke-test it")
    p.add_argument("model", help='"tiny", an HF model dir, or a run dir')
    p.add_argument("output", help="the folder to create")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-smoke-test", action="store_true")
    p.add_argument("--skip-compat-check", action="store_true",
                   help="do not load the folder in a transformers 4.57.0 side environment (the submission "
                        "image's version; built once under .cache/side-envs, needs PyPI access)")
    p.add_argument("--input", help="problems JSONL for the smoke test (default: the sample eval set)")
    p.add_argument("--limit", type=int, default=8, help="smoke-test only the first N problems (0 = all)")
    p.add_argument("--backend", default="transformers", help="transformers | vllm")
    p.set_defaults(func=_cmd_prepare)
    t = ssub.add_parser("smoke-test", help="run the submission contract: problems JSONL -> records + output")
    t.add_argument("model")
    t.add_argument("--input", required=True, help="problems JSONL (like sample_problems.jsonl)")
    t.add_argument("--output", required=True, help="output JSONL to write")
    t.add_argument("--max-new-tokens", type=int, default=64, help="the official example uses 64")
    t.add_argument("--backend", default="transformers", help="transformers | vllm (as in the image)")
    t.add_argument("--limit", type=int, default=0, help="only the first N problems (0 = all)")
    t.set_defaults(func=_cmd_smoke)
    c = ssub.add_parser("check-env", help="check that CUDA_VISIBLE_DEVICES holds numeric ids (vLLM needs them)")
    c.set_defaults(func=_cmd_check_env)
