"""The JSONL fast path (jiter) against the exact reader (Python's json + the duplicate-key hook).

`schema.parse_line` parses with jiter and falls back to `schema.parse_exact` for whatever jiter
refuses; the data it accepts must be exactly what the exact reader accepts, as the same objects.
Checked on hand-picked edge cases of both readers and on thousands of seeded mutations of real
records (bytes inserted, deleted, replaced, duplicated keys, escapes, deep nesting).
"""
from __future__ import annotations

import json
import math
import random

import jiter

from tunekit.data import schema

RECORD = {"messages": [{"role": "system", "content": "あなたは数学の先生です。"},
                       {"role": "user", "content": "1 + 1 は？ \"引用\" \\ と / と\ttab"},
                       {"role": "assistant", "content": "答えは $\\boxed{2}$ です。😀"}],
          "ID": 7, "score": -0.5, "tags": ["a", None, True, 1e10]}

EDGES = [
    b'{"a":1}', b'\t{"a":1}\r', b' {"a":1} ', b'{"a":"x\ty"}', b'{"a":"x\x01y"}', b'{"a":"x\x7fy"}',
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":1e400}', b'{"a":-0}', b'{"a":-0.0}',
    b'{"a":5e-324}', b'{"a":1.0000000000000001}', b'{"a":123456789012345678901234567890}',
    b'{"a":' + b'9' * 4300 + b'}', b'{"a":' + b'9' * 4301 + b'}', b'{"a":01}', b'{"a":.5}', b'{"a":1.}',
    b'{"a":1,}', b'[1,2,]', b'{"a":1}  x', b'{"a":1}\x00', b'"str"', b'1', b'null', b'[]', b'{}',
    b'{"a":1,"a":2}', b'{"a":1,"\\u0061":2}', b'{"m":[{"a":1,"a":1}]}', b'{"":1,"":2}', b'{"a":{"b":1},"b":1}',
    b'{"a":"\\ud83d\\ude00"}', b'{"a":"\\udc00"}', b'{"a":"\\ud800x"}', b'{"a":"\\u0000"}', b'{"a":"\\/"}',
    b'{"a":"\xe3\x81\x82"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xff"}', b'\xef\xbb\xbf{"a":1}',
    b'\xc2\xa0{"a":1}', b'{"a":1}\xe3\x80\x80', b'{\x0b"a":1}', b'{"a":\x0c1}', b' ', b'', b'{"a":"\\x41"}',
    b'[' * 150 + b']' * 150, b'[' * 300 + b']' * 300, b'{"a":' * 250 + b'1' + b'}' * 250,
    json.dumps(RECORD, ensure_ascii=False).encode(), json.dumps(RECORD).encode(),
]


def same(a, b) -> bool:
    """Equal parse results, NaN equal to NaN, and the same types (1 is not 1.0 nor True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def mutations(seed: int, n: int) -> list[bytes]:
    """Seeded damage to real records: the kinds of bytes a broken export or a hand edit leaves."""
    rng = random.Random(seed)
    base = [json.dumps(RECORD, ensure_ascii=False).encode(), json.dumps(RECORD).encode(),
            json.dumps(RECORD, ensure_ascii=False, indent=1).replace("\n", "").encode()]
    alphabet = [b'"', b"\\", b"{", b"}", b"[", b"]", b":", b",", b" ", b"\t", b"\x00", b"\xff", b"\xe3",
                b"\\u", b"\\ud800", b"\\udc00", b"0", b"-", b"e", b"1.5", b"NaN", b'"role":1,', b'"ID":2,',
                b'"messages":[],', "あ".encode()]
    out = []
    for _ in range(n):
        line = bytearray(rng.choice(base))
        for _edit in range(rng.randint(1, 3)):
            at = rng.randrange(len(line) + 1)
            what = rng.random()
            if what < 0.4:
                line[at:at] = rng.choice(alphabet)
            elif what < 0.7:
                del line[at:at + rng.randint(1, 4)]
            else:
                line[at:at + 1] = rng.choice(alphabet)
        out.append(bytes(line))
    return out


def test_the_fast_path_gives_exactly_what_the_exact_reader_gives():
    lines = EDGES + mutations(0, 4000)
    results = [(schema.parse_line(raw), schema.parse_exact(raw)) for raw in lines]
    differ = [raw for raw, (fast, exact) in zip(lines, results)
              if not (same(fast[0], exact[0]) and fast[1] == exact[1])]
    assert differ == []
    # Both kinds of line are there in numbers (the mutations are not all broken, nor all harmless).
    refused = sum(exact[1] is not None for _, exact in results)
    assert 500 < refused < len(lines) - 500


def test_jiter_alone_accepts_what_json_accepts_but_lone_surrogates():
    """The fallback is what keeps parse_line exact; this pins how often it is needed. A jiter
    release that accepts more than json (or parses differently) fails here, not in a user's data."""
    accepted_differently = []
    for raw in EDGES + mutations(1, 3000):
        exact_obj, exact_err = schema.parse_exact(raw)
        try:
            obj = jiter.from_json(raw, catch_duplicate_keys=True)
        except ValueError:
            obj = None
            if exact_err is None and not schema._SURROGATE_RE.search(json.dumps(exact_obj, ensure_ascii=False)):
                # json accepted it, jiter did not, and no lone surrogate explains it: only deep
                # nesting may (jiter stops at 200 levels, json at ~1000; the fallback reads it)
                if not raw.startswith((b"[" * 150, b'{"a":' * 150)):
                    accepted_differently.append(raw)
            continue
        if exact_err is not None or not same(obj, exact_obj):
            accepted_differently.append(raw)
    assert accepted_differently == []


def test_a_reader_that_differs_is_caught(monkeypatch):
    """Plant a fast path that keeps the last of two duplicate keys (as orjson or a plain json.loads
    do): the comparison above must fail on it."""
    monkeypatch.setattr(schema.jiter, "from_json", lambda raw, **kw: json.loads(raw))
    raw = b'{"a":1,"a":2}'
    assert schema.parse_line(raw) != schema.parse_exact(raw)
