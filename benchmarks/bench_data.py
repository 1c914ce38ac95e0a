"""Benchmark of the data pipeline on a generated SFT corpus with the real llm-jp tokenizer.

    .venv/bin/python benchmarks/bench_data.py [--records 100000] [--workers 0]

Prints, in one run:
- raw tokenizer batch-encode throughput (tokens/s): the Rust tokenizer's `encode_batch` over the
  rendered conversations, with its own thread pool on all cores (the baseline);
- the kit's full pipeline throughput (read + validate + template + loss masks + cache write, in
  worker processes on all cores) and its ratio to the baseline (target >= 0.8);
- cold (build) vs warm (cached) load time; warm load of the packed dataset too (target < 1 s),
  with the resident-memory growth showing that tokens are memory-mapped, not read;
- peak memory of this process and of the worker processes.
- the same comparison on ONE core over 10k records (interleaved runs), a per-core efficiency figure
  that machine load distorts less than the all-core one.
Nothing here is part of the test suite. Figures depend on the machine: run it on an idle one.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The baseline uses the tokenizer's own thread pool: it must be allowed before tokenizers loads.
os.environ["TOKENIZERS_PARALLELISM"] = "true"

SYSTEMS = ["以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。",
           "あなたは数学の先生です。途中の式も書いて、最後に答えを \\boxed{} で示してください。", ""]
TOPICS = ["一次方程式", "連立方程式", "二次関数", "確率", "数列", "微分", "積分", "ベクトル", "複素数", "図形"]


def problem(rng: random.Random) -> tuple[str, str]:
    """A Japanese maths exercise and a worked answer of varying length."""
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 999)
    topic = rng.choice(TOPICS)
    q = (f"{topic}の問題です。{a}x + {b} = {c} を満たす x を求めなさい。"
         + "ただし、途中の計算も丁寧に書くこと。" * rng.randint(0, 3))
    steps = [f"両辺から {b} を引くと {a}x = {c - b} となる。",
             f"両辺を {a} で割ると x = \\frac{{{c - b}}}{{{a}}} である。"]
    steps += [f"検算：{a} × \\frac{{{c - b}}}{{{a}}} + {b} = {c} となり、確かに成り立つ。"] * rng.randint(0, 6)
    return q, "\n".join(steps) + f"\nよって、答えは $\\boxed{{\\frac{{{c - b}}}{{{a}}}}}$ です。"


def records(n: int, seed: int = 0) -> list[dict]:
    """n SFT records (about a quarter multi-turn), deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": rng.choice(SYSTEMS)}]
        for _turn in range(1 if rng.random() < 0.75 else rng.randint(2, 3)):
            q, ans = problem(rng)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
        out.append({"messages": msgs})
    return out


def render(record: dict) -> str:
    """The conversation as one text in the llm-jp prompt format (what raw SentencePiece encodes)."""
    msgs = record["messages"]
    return msgs[0]["content"] + "".join(
        f"\n\n### 指示:\n{u['content']}\n\n### 応答:\n{a['content']}" for u, a in zip(msgs[1::2], msgs[2::2]))


def generate(path: Path, n: int, seed: int = 0) -> list[str]:
    """Write n SFT records to `path`; return their rendered texts."""
    recs = records(n, seed)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    return [render(r) for r in recs]


def rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    from tunekit.data import cache
    from tunekit.data.sft import load_sft_data
    from tunekit.model import llmjp_tokenizer_dir

    tok_dir = llmjp_tokenizer_dir()
    workers = args.workers or cache.default_workers()
    tmp = Path(tempfile.mkdtemp(prefix="tunekit-bench-"))
    os.environ["TUNEKIT_CACHE_DIR"] = str(tmp / "cache")
    try:
        vdir = tmp / "data" / "bench" / "tuning" / "train"
        vdir.mkdir(parents=True)
        path = vdir / "gen.jsonl"
        t = time.perf_counter()
        texts = generate(path, args.records)
        print(f"corpus: {args.records} SFT records, {path.stat().st_size / 2**20:.1f} MB "
              f"(generated in {time.perf_counter() - t:.1f} s); cores: {workers}")

        raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        t = time.perf_counter()
        raw_tokens = 0
        for i in range(0, len(texts), 10_000):
            raw_tokens += sum(len(e.ids) for e in raw.encode_batch(texts[i:i + 10_000], add_special_tokens=False))
        raw_s = time.perf_counter() - t
        raw_tps = raw_tokens / raw_s
        print(f"raw tokenizer encode_batch (Rust threads, all cores): {raw_tokens:,} tokens in "
              f"{raw_s:.1f} s = {raw_tps:,.0f} tokens/s")

        # Single core, same 10k records, interleaved: an efficiency figure that machine load
        # affects (nearly) equally on both sides.
        from tunekit.data import encode, schema

        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        lines = schema.lines_in_range(path, 0, path.stat().st_size, 1)[:10_000]
        sub = texts[:10_000]
        tok = cache.load_tokenizer(tok_dir)
        info = encode.probe(tok)
        raw1 = kit1 = 0.0
        for _ in range(2):
            t = time.perf_counter()
            n1 = sum(len(e.ids) for e in raw.encode_batch(sub, add_special_tokens=False))
            raw1 += time.perf_counter() - t
            t = time.perf_counter()
            res = cache.process_chunk(lines, str(path), "sft", {"style": "kit"}, tok, info)
            kit1 += time.perf_counter() - t
        k1 = len(res["tokens"])
        print(f"single core, 10k records: raw {2 * n1 / raw1:,.0f} tokens/s, kit (validate + template "
              f"+ masks, no write) {2 * k1 / kit1:,.0f} tokens/s, ratio {(k1 / kit1) / (n1 / raw1):.2f}")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        del texts, raw, lines, sub, res

        t = time.perf_counter()
        tf = cache.tokenize_file(path, "sft", tok_dir, workers=workers, show_progress=False)
        cold_s = time.perf_counter() - t
        kit_tokens = int(tf.array("offsets")[-1])
        kit_tps = kit_tokens / cold_s
        print(f"kit pipeline (read + validate + template + masks + cache write, {workers} processes): "
              f"{kit_tokens:,} tokens in {cold_s:.1f} s = {kit_tps:,.0f} tokens/s")
        print(f"ratio kit / raw: {kit_tps / raw_tps:.2f}  (target >= 0.8)")

        rss0 = rss_mb()
        t = time.perf_counter()
        tf = cache.tokenize_file(path, "sft", tok_dir, workers=workers, show_progress=False)
        ids, mask = tf.sft(len(tf) - 1)
        warm_s = time.perf_counter() - t
        print(f"load cached file: cold (build) {cold_s:.1f} s, warm {warm_s:.3f} s "
              f"(rebuilt: {tf.built}; tokens on disk {kit_tokens * 5 / 2**20:.0f} MB, RSS growth "
              f"{rss_mb() - rss0:.1f} MB)")
        rss0 = rss_mb()
        t = time.perf_counter()
        data = load_sft_data({"data_dir": str(tmp / "data"), "data_version": "bench",
                              "tokenizer": str(tok_dir), "max_seq_length": 4096, "workers": workers},
                             show_progress=False)
        item = data.train[0]
        warm_pack_s = time.perf_counter() - t
        print(f"warm load_sft_data (split + pack {data.train.stats.examples:,} examples into "
              f"{len(data.train):,} sequences of 4096, utilisation {data.train.stats.utilisation:.3f}): "
              f"{warm_pack_s:.2f} s, RSS growth {rss_mb() - rss0:.1f} MB  (target < 1 s); "
              f"item keys {sorted(item)}")
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        build = tf.manifest["build"]
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"peak memory: this benchmark process {own:.0f} MB (holds the corpus texts for the "
              f"baseline); each of the {build['processes']} tokeniser processes at most "
              f"{build['peak_rss_mb']} MB (its own VmHWM)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
