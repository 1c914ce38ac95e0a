"""What one huge record costs the data pipeline (issue #14 item 5), with the real llm-jp tokenizer.

    .venv/bin/python benchmarks/bench_huge_line.py [--mb 50] [--records 200]

Tokenises, each in a fresh child process (so peak memory is its own), into an empty cache:
- baseline: a file of `--records` ordinary SFT records;
- huge: the same file plus ONE valid record whose answer is `--mb` MB of Japanese text.
Prints seconds and peak resident memory of both and the huge/baseline ratios. The kit refuses a
line over `tunekit.data.schema.MAX_RECORD_BYTES` unread (path:line error); before that limit the
50 MB record took minutes and gigabytes only to be truncated to max_seq_length tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
from tunekit.data.cache import tokenize_file
from tunekit.data.config import resolve_tokenizer
t = time.perf_counter()
tf = tokenize_file(sys.argv[1], "sft", resolve_tokenizer("llmjp"), workers=1, show_progress=False)
seconds = time.perf_counter() - t
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak, "kept": tf.report.kept,
                  "skipped": tf.report.skipped, "problems": [str(p)[-160:] for p in tf.report.problems]}))
"""


def record(i: int, answer: str) -> bytes:
    msgs = [{"role": "system", "content": "以下は、タスクを説明する指示です。"},
            {"role": "user", "content": f"問題 {i}: 一次方程式 {i}x + 3 = {i + 7} を解きなさい。"},
            {"role": "assistant", "content": answer}]
    return json.dumps({"messages": msgs}, ensure_ascii=False).encode() + b"\n"


def measure(path: Path, cache: Path) -> dict:
    env = {**os.environ, "TUNEKIT_CACHE_DIR": str(cache), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0)
    ap.add_argument("--records", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-huge-") as tmp:
        tmp = Path(tmp)
        normal = b"".join(record(i, f"x = {i}。よって答えは $\\boxed{{{i}}}$ です。" * 3) for i in range(args.records))
        base, huge = tmp / "base.jsonl", tmp / "huge.jsonl"
        base.write_bytes(normal)
        filler = "三角形の内角の和は百八十度である。" * int(args.mb * 2**20 / 51 + 1)  # 3 bytes a character
        huge.write_bytes(normal + record(-1, filler[: int(args.mb * 2**20 / 3)]))
        print(f"huge line: {huge.stat().st_size - base.stat().st_size:,} bytes")
        b = measure(base, tmp / "cache-base")
        h = measure(huge, tmp / "cache-huge")
    for name, r in (("baseline", b), (f"+ one {args.mb:g} MB line", h)):
        print(f"{name:<22} {r['seconds']:8.2f} s  peak {r['peak_mb']:8.0f} MB  kept {r['kept']}  "
              f"skipped {r['skipped']}")
    print(f"ratio huge/baseline: time {h['seconds'] / b['seconds']:.2f}x, peak memory "
          f"{h['peak_mb'] / b['peak_mb']:.2f}x")
    for p in h["problems"]:
        print("  ", p)


if __name__ == "__main__":
    main()
