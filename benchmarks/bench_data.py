"""Benchmark of the data pipeline against its true baselines, with the real llm-jp tokenizer.

    .venv/bin/python benchmarks/bench_data.py [--records 100000] [--workers 0]

Prints, in one run, each figure next to its target (issue 19) and the load of the machine:
1. Tokenisation: the kit's cold build (read + validate + template + loss masks + cache write, worker
   processes on all cores) against raw SentencePiece `encode(texts, num_threads=N)` of the same
   conversations with the same N: wall seconds AND CPU seconds (children included), interleaved
   (baseline, kit, baseline, kit; best of each). Target: kit throughput >= 0.8x the baseline's.
2. The build's parent process memory at 10k records and at --records (a fresh child process
   each, VmHWM): flat, i.e. it does not grow with the data.
3. Opening the cached file: the kit's warm `tokenize_file` against `pickle.load` of the same token
   lists (what the official kit's `<name>.pkl` cache does), RSS growth of the open, and reading
   every record one by one both ways. Target: open >= 100x faster than pickle.load.
4. Integrity checks: what verifying every array's xxh3 checksum costs (it runs at build and when a
   file's stat fingerprint changes, not on a warm open) next to a warm open.
5. Warm `load_sft_data` (split + pack at 4096): target < 1 s.
Everything is written under one temp dir, removed at the end (also on Ctrl-C / SIGTERM). The llm-jp
model comes from the kit's shared-fixture resolver (../shared/fixtures or $TUNEKIT_SHARED_FIXTURES).
Nothing here is part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


BUILD_CHILD = r"""
import json, os, resource, sys, time
from tunekit.data import cache
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
before = hwm()
r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
tf = cache.tokenize_file(sys.argv[1], "sft", sys.argv[2], workers=int(sys.argv[3]), show_progress=False)
wall = time.perf_counter() - t0
r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = sum(getattr(b, f) - getattr(a, f) for a, b in ((r0, r1), (c0, c1)) for f in ("ru_utime", "ru_stime"))
print("RESULT " + json.dumps({"wall": wall, "cpu": cpu, "tokens": int(tf.array("offsets")[-1]),
                              "parent_before_mb": before, "parent_peak_mb": hwm(), "build": tf.manifest["build"]}))
"""


def cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children so far."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_in_child(path: Path, tok_dir: Path, workers: int, cache_dir: Path, known_tokenizer: bool = False) -> dict:
    """A cold build in a fresh interpreter (its own memory high-water mark), into an empty cache;
    known_tokenizer=True keeps only the tokenizer facts of an earlier build (`cache.tokenizer_facts`:
    a new data file tokenised with a tokenizer used before, the usual case). The data file is
    always hashed again (its fingerprint memo is removed)."""
    if known_tokenizer:
        for sub in ("data", "fingerprints"):
            shutil.rmtree(cache_dir / sub, ignore_errors=True)
    else:
        shutil.rmtree(cache_dir, ignore_errors=True)
    env = {**os.environ, "TUNEKIT_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", BUILD_CHILD, str(path), str(tok_dir), str(workers)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"the build failed:\n{out.stderr[-3000:]}")
    return json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])


def raw_sentencepiece(model_file: Path, texts: list[str], threads: int) -> dict:
    """The baseline: raw SentencePiece batch encode of the same conversations, same thread count."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    c, t = cpu_seconds(), time.perf_counter()
    n = sum(map(len, sp.encode(texts, num_threads=threads)))
    return {"wall": time.perf_counter() - t, "cpu": cpu_seconds() - c, "tokens": n}


def best(runs: list[dict], key: str) -> float:
    return min(r[key] for r in runs)


class Report:
    """Collects `figure: value vs baseline = ratio (target ...)` lines, printed again at the end."""

    def __init__(self):
        self.lines: list[str] = []

    def ratio(self, what: str, ratio: float, target: str, met: bool, detail: str) -> None:
        line = f"{what}: {ratio:.2f}x  (target {target}: {'met' if met else 'NOT met'})  {detail}"
        self.lines.append(line)
        print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs of each side (best is kept)")
    args = ap.parse_args()

    from tunekit.data import cache
    from tunekit.data.sft import load_sft_data

    try:  # (older kits, measured for before/after figures, have no fingerprint module)
        from tunekit.data import fingerprint
    except ImportError:
        fingerprint = None
    from tunekit.model import llmjp_tokenizer_dir

    workers = args.workers or cache.default_workers()
    tmp = Path(tempfile.mkdtemp(prefix="tunekit-bench-data-"))
    # SIGTERM (a killed `make bench`) must still run the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ["TUNEKIT_CACHE_DIR"] = str(tmp / "cache")
    rep = Report()
    try:
        tok_dir = llmjp_tokenizer_dir()
        vdir = tmp / "data" / "bench" / "tuning" / "train"
        vdir.mkdir(parents=True)
        path = vdir / "gen.jsonl"
        texts = generate(path, args.records)
        small = tmp / "small.jsonl"
        generate(small, min(10_000, args.records))
        print(f"corpus: {args.records:,} SFT records, {path.stat().st_size / 2**20:.1f} MB; workers/threads: "
              f"{workers}; load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)

        # 1. tokenisation, interleaved
        raw_runs, first_runs, kit_runs = [], [], []
        for _ in range(args.repeats):
            raw_runs.append(raw_sentencepiece(tok_dir / "tokenizer.model", texts, workers))
            first_runs.append(build_in_child(path, tok_dir, workers, tmp / "build-cache"))
            kit_runs.append(build_in_child(path, tok_dir, workers, tmp / "build-cache", known_tokenizer=True))
        raw_tok, kit_tok = raw_runs[0]["tokens"], kit_runs[0]["tokens"]
        for name, runs, n in (("raw SentencePiece", raw_runs, raw_tok), ("kit, new tokenizer", first_runs, kit_tok),
                              ("kit build", kit_runs, kit_tok)):
            print(f"  {name:<18} {n:>12,} tokens  wall {best(runs, 'wall'):6.2f} s  cpu {best(runs, 'cpu'):6.2f} s"
                  f"  ({n / best(runs, 'wall'):,.0f} tokens/s)")
        print("  (kit build: a new data file with a tokenizer used before; 'new tokenizer' also loads the HF "
              "tokenizer and checks its sentencepiece twin, once per tokenizer)")
        first_wall = (kit_tok / best(first_runs, "wall")) / (raw_tok / best(raw_runs, "wall"))
        first_cpu = (kit_tok / best(first_runs, "cpu")) / (raw_tok / best(raw_runs, "cpu"))
        wall_ratio = (kit_tok / best(kit_runs, "wall")) / (raw_tok / best(raw_runs, "wall"))
        cpu_ratio = (kit_tok / best(kit_runs, "cpu")) / (raw_tok / best(raw_runs, "cpu"))
        print(f"  (the kit's token count adds bos/eos per turn; encoder: "
              f"{kit_runs[0]['build'].get('encoder', 'tokenizers')})")
        # The floor of any Python pipeline: parsing the JSON lines alone (jiter, as the kit does),
        # one core, against raw SentencePiece on one core (the kit also validates, hashes,
        # templates, masks and writes).
        import jiter

        lines = path.read_bytes().splitlines()[:10_000]
        c = cpu_seconds()
        for line in lines:
            jiter.from_json(line, catch_duplicate_keys=True)
        parse_cpu = cpu_seconds() - c
        one = raw_sentencepiece(tok_dir / "tokenizer.model", texts[:10_000], 1)
        print(f"  floor: parsing 10k lines alone (jiter) costs {parse_cpu:.2f} CPU-s = {parse_cpu / one['cpu']:.0%} "
              f"of raw SentencePiece encoding them ({one['cpu']:.2f} CPU-s, one thread)")
        rep.ratio("tokenise throughput vs raw SentencePiece (wall)", wall_ratio, ">= 0.8", wall_ratio >= 0.8,
                  f"cpu-seconds ratio {cpu_ratio:.2f}x; with a tokenizer never used before {first_wall:.2f}x wall, "
                  f"{first_cpu:.2f}x cpu")
        del texts

        # 2. parent memory of the build
        little = build_in_child(small, tok_dir, workers, tmp / "build-cache")
        big = kit_runs[-1]
        grow = lambda r: r["parent_peak_mb"] - r["parent_before_mb"]  # noqa: E731
        print(f"build parent process peak: {little['parent_peak_mb']:.0f} MB at {min(10_000, args.records):,} records, "
              f"{big['parent_peak_mb']:.0f} MB at {args.records:,} (growth during the build {grow(little):.0f} / "
              f"{grow(big):.0f} MB); each worker adds at most {big['build']['peak_rss_mb']:.0f} MB", flush=True)

        # 3. opening: the real cache, built once here, then opened warm
        tf = cache.tokenize_file(path, "sft", tok_dir, workers=workers, show_progress=False)
        lists = [tf.sft(i)[0].tolist() for i in range(len(tf))]
        pkl = tmp / "gen.pkl"
        with open(pkl, "wb") as f:
            pickle.dump(lists, f, protocol=pickle.HIGHEST_PROTOCOL)
        del lists, tf
        time.sleep(getattr(fingerprint, "RACY_S", 0))   # a real reuse comes later than this (see fingerprint)
        t = time.perf_counter()
        cache.tokenize_file(path, "sft", tok_dir, show_progress=False)  # the one re-verification after a build
        first_open = time.perf_counter() - t
        pickle_s, open_s, growth = [], [], []
        for _ in range(5):
            t = time.perf_counter()
            with open(pkl, "rb") as f:
                lists = pickle.load(f)
            pickle_s.append(time.perf_counter() - t)
            del lists
            r0 = rss_mb()
            t = time.perf_counter()
            tf = cache.tokenize_file(path, "sft", tok_dir, show_progress=False)
            tf.sft(len(tf) - 1)
            open_s.append(time.perf_counter() - t)
            growth.append(rss_mb() - r0)
        open_ratio = min(pickle_s) / min(open_s)
        rep.ratio("open cached file vs pickle.load of the same token lists", open_ratio, ">= 100",
                  open_ratio >= 100, f"open {min(open_s) * 1e3:.1f} ms, pickle.load {min(pickle_s):.2f} s, "
                  f"RSS growth of an open {max(growth):.1f} MB")
        t = time.perf_counter()
        with open(pkl, "rb") as f:
            n = sum(len(x) for x in pickle.load(f))
        iter_pickle = time.perf_counter() - t
        t = time.perf_counter()
        tf = cache.tokenize_file(path, "sft", tok_dir, show_progress=False)
        m = sum(len(tf.sft(i)[0]) for i in range(len(tf)))
        iter_kit = time.perf_counter() - t
        assert n == m
        print(f"  open + read every record one by one: kit {iter_kit:.2f} s, pickle.load + iterate {iter_pickle:.2f} s "
              f"({iter_pickle / iter_kit:.1f}x)")

        # 4. what verification costs
        names = [f"{k}.npy" for k, v in tf.manifest["arrays"].items() if "xxh3_128" in v]
        if fingerprint is not None and names:
            size = sum((tf.dir / k).stat().st_size for k in names)
            t = time.perf_counter()
            for k in names:
                fingerprint.hash_file(tf.dir / k, "xxh3_128")
            verify_s = time.perf_counter() - t
            print(f"integrity: verifying all {len(names)} arrays ({size / 2**20:.0f} MB) takes {verify_s * 1e3:.0f} "
                  f"ms = {verify_s / min(open_s):.1f}x a warm open; it runs at build and when an array's fingerprint "
                  f"changes, not on a warm open (first open right after the build: {first_open * 1e3:.0f} ms)")
        else:
            print("integrity: this kit records no array checksums")

        # 5. packed load
        t = time.perf_counter()
        data = load_sft_data({"data_dir": str(tmp / "data"), "data_version": "bench", "tokenizer": str(tok_dir),
                              "max_seq_length": 4096, "workers": workers}, show_progress=False)
        data.train[0]
        pack_s = time.perf_counter() - t
        print(f"warm load_sft_data (split + pack {data.train.stats.examples:,} examples into {len(data.train):,} "
              f"sequences of 4096, utilisation {data.train.stats.utilisation:.3f}): {pack_s:.2f} s  (target < 1 s: "
              f"{'met' if pack_s < 1 else 'NOT met'})")
        print(f"\nload average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other processes share "
              "them: ratios come from interleaved runs, absolute times do not)")
        print("summary:\n  " + "\n  ".join(rep.lines))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from tunekit.errors import UserError

    try:
        sys.exit(main())
    except UserError as exc:  # e.g. no llm-jp tokenizer model: say where it is looked for
        sys.exit(f"bench_data: {exc}")
