"""Benchmark of the evaluation path: generation throughput and scoring throughput.

    .venv/bin/python benchmarks/bench_eval.py [--problems 32] [--new-tokens 32] [--batch-size 16]

1. Generation (tiny model, CPU, greedy, the official prompt through the chat template): new tokens
   per second with all prompts in left-padded batches vs one prompt at a time. Also checks that
   both give the same answers (batching must not change greedy outputs).
2. Scoring (tunekit scorer on the bundled sample eval set): problems per second for correct
   answers (the gold solutions written as \\boxed{...}) and for the tiny model's outputs (noise,
   which walks through every fallback before failing). The parse cache is cleared before each.
Figures are measured on this machine at run time; nothing here is a fixed number.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_generation(problems: list[str], new_tokens: int, batch_size: int) -> dict:
    from tunekit.evaluate.generate import Decoding, generate_answers, load_model, resolve_model_dir

    loaded = load_model(resolve_model_dir("tiny"), device="cpu")
    def run(bs):
        return generate_answers("tiny", problems, decoding=Decoding(max_new_tokens=new_tokens, batch_size=bs),
                                backend="transformers", progress=False, loaded=loaded)

    run(batch_size)  # warm-up (first-call allocations, lazy imports)
    one, batched = run(1), run(batch_size)
    return {"one_at_a_time_tok_s": one.tokens_per_second, "batched_tok_s": batched.tokens_per_second,
            "speedup": batched.tokens_per_second / one.tokens_per_second,
            "new_tokens": batched.new_tokens, "same_outputs": one.outputs == batched.outputs,
            "outputs": batched.outputs}


def bench_scoring(gold: list[dict], outputs: list[str]) -> tuple[float, float]:
    """(problems per second, accuracy) of the tunekit scorer on these outputs, cold parse cache."""
    from tunekit.evaluate.parsing import _extended_parse
    from tunekit.evaluate.verify import check

    _extended_parse.cache_clear()
    t0 = time.perf_counter()
    right = sum(check(out, g["solution"], g.get("evaluation_method")).correct for g, out in zip(gold, outputs))
    return len(gold) / (time.perf_counter() - t0), right / len(gold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    import torch

    from tunekit.evaluate.records import load_gold
    from tunekit.paths import repo_root

    gold = load_gold(repo_root() / "datasets" / "sample" / "eval")
    sub = gold[: args.problems]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads by default")
    g = bench_generation([x["problem"] for x in sub], args.new_tokens, args.batch_size)
    print(f"generation, tiny model, {len(sub)} problems x up to {args.new_tokens} new tokens "
          f"({g['new_tokens']} generated):")
    print(f"  one prompt at a time : {g['one_at_a_time_tok_s']:8.0f} new tokens/s")
    print(f"  batches of {args.batch_size:<3}       : {g['batched_tok_s']:8.0f} new tokens/s "
          f"({g['speedup']:.1f}x), same greedy outputs: {g['same_outputs']}")
    right = [r"\boxed{%s}" % (x["solution"][0] if isinstance(x["solution"], list) else x["solution"]).strip("$")
             for x in gold]
    noise = (g["outputs"] * (len(gold) // len(sub) + 1))[: len(gold)]
    print(f"scoring, tunekit scorer, {len(gold)} problems of the sample eval set:")
    for name, outs in (("correct answers", right), ("tiny-model outputs", [o[0] for o in noise])):
        rate, acc = bench_scoring(gold, outs)
        print(f"  {name:<20} : {rate:8.1f} problems/s (accuracy {acc:.3f})")


if __name__ == "__main__":
    main()
