"""Line-by-line validation: every case of issue #3 item 1, line-numbered, counted, exit codes."""
from __future__ import annotations

import json

import pytest

from tunekit.cli import main
from tunekit.data.validate import validate_file

SYS = {"role": "system", "content": "s"}
U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}
A2 = {"role": "assistant", "content": "b"}  # not a duplicate of the line before


def j(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


# (raw line bytes, expected level or None, expected message fragment)
SFT_CASES = [
    (b"\xef\xbb\xbf" + j({"messages": [SYS, U, A]}), None, ""),                 # BOM on line 1
    (j({"messages": [SYS, U, A2], "id": 7, "meta": {"x": 1}}) + b"\r", None, ""),  # CRLF, extra keys
    (b"", None, ""),                                                               # blank
    (b"   ", None, ""),                                                            # blank (spaces)
    (b'{"messages": [', "error", "invalid JSON"),
    (b'{"messages": "\xff\xfe"}', "error", "invalid UTF-8"),
    (j([1, 2]), "error", "must be a JSON object"),
    (j({"msgs": []}), "error", "missing key 'messages'"),
    (j({"messages": "hi"}), "error", "'messages' must be a list"),
    (j({"messages": [SYS, "hi"]}), "error", "messages[1] must be an object"),
    (j({"messages": [SYS, {"role": "bot", "content": "x"}]}), "error", "messages[1].role must be one of"),
    (j({"messages": [SYS, {"role": "user", "content": 3}, A]}), "error", "messages[1].content must be a string"),
    (j({"messages": [U, A]}), "error", "messages[0] must be the system message"),
    (j({"messages": [SYS, U, U, A]}), "error", "messages[2].role is 'user' but 'assistant' was expected"),
    (j({"messages": [SYS, A, U]}), "error", "messages[1].role is 'assistant' but 'user'"),
    (j({"messages": [SYS, U]}), "error", "at least system, user and assistant"),
    (j({"messages": [SYS, U, A, U]}), "warning", "last user message has no answer"),
    (j({"messages": [SYS, U, {"role": "assistant", "content": "x<|eos|>"}]}), "warning", "contains '<|eos|>'"),
    (j({"messages": [SYS, U, {"role": "assistant", "content": " "}]}), "warning", "messages[2] (assistant) is empty"),
    (j({"messages": [{"role": "system", "content": ""}, U, A]}), None, ""),       # empty system is fine
    # issue #14: lines that crashed the reader, or passed and then crashed the tokenizer
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "error", "nested too deeply"),
    (b'{"messages": [], "n": ' + b"1" * 5000 + b"}", "error", "more than 4300 digits"),
    (j({"messages": [SYS, U, A]}).replace(b'"a"', b'"\\ud800"'), "error", "half of a UTF-16 surrogate pair"),
    (b'{"messages": [], "messages": []}', "error", "key 'messages' appears twice"),
    (b'{"messages": [{"role": "system", "content": "a\tb"}]}', "error", "Invalid control character at column 47"),
    (j({"messages": [SYS, U, {"role": "assistant", "content": "x\u0000"}]}), "warning", "NUL character"),
    (j({"messages": [SYS, U, {"role": "assistant", "content": "\u00a0\u200b"}]}), "warning", "invisible"),
    (j({"messages": [SYS, {"role": "user", "content": "id1"}, A], "ID": 5}), None, ""),
    (j({"messages": [SYS, {"role": "user", "content": "id2"}, A], "ID": 5}), "warning", "the same ID as line 28"),
    (j({"messages": [SYS, U, A]}), "warning", "exact duplicate of line 1"),
    (j({"messages": [SYS, U, {"role": "assistant", "content": "y" * (1 << 20)}]}), "error",
     "more than the 1.0 MiB a record may have"),
    (j({"messages": [SYS, U, {"role": "assistant", "content": "a <|pad|> b"}]}), "warning", "contains '<|pad|>'"),
]
DPO_CASES = [
    (j({"messages": [SYS, U], "chosen_response": "c", "rejected_response": "r"}), None, ""),
    (j({"messages": [SYS, U, A, U], "chosen_response": "c", "rejected_response": "r", "x": 1}), None, ""),
    (j({"messages": [SYS, U, A], "chosen_response": "c", "rejected_response": "r"}), "error", "must end with a user"),
    (j({"messages": [SYS], "chosen_response": "c", "rejected_response": "r"}), "error", "must end with a user"),
    (j({"messages": [SYS, U], "rejected_response": "r"}), "error", "missing key 'chosen_response'"),
    (j({"messages": [SYS, U], "chosen_response": "c", "rejected_response": None}), "error",
     "'rejected_response' must be a string"),
    (j({"messages": [SYS, U], "chosen_response": "same", "rejected_response": "same"}), "warning", "identical"),
    (j({"messages": [SYS, U], "chosen_response": " ", "rejected_response": "r"}), "warning",
     "chosen_response is empty"),
    (j({"messages": [SYS, U], "chosen_response": "c", "rejected_response": "\u200b"}), "warning",
     "rejected_response is empty to a reader"),
    (j({"messages": [SYS, U], "chosen_response": "c", "rejected_response": "r"}), "warning",
     "exact duplicate of line 1"),
]


def write(path, cases, final_newline=True):
    data = b"\n".join(c[0] for c in cases) + (b"\n" if final_newline else b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind,cases", [("sft", SFT_CASES), ("dpo", DPO_CASES)])
@pytest.mark.parametrize("final_newline", [True, False])
def test_every_case_is_reported_once_with_its_line(tmp_path, kind, cases, final_newline):
    path = write(tmp_path / f"{kind}.jsonl", cases, final_newline)
    r = validate_file(path, kind)
    by_line = {}
    for p in r.problems:
        by_line.setdefault(p.line, []).append(p)
    for n, (raw, level, fragment) in enumerate(cases, start=1):
        got = by_line.get(n, [])
        if level is None:
            assert got == [], f"line {n}: unexpected {got}"
        else:
            assert len(got) == 1, f"line {n}: expected exactly one problem, got {got}"
            assert got[0].level == level and fragment in got[0].message, f"line {n}: {got[0]}"
            assert str(got[0]).startswith(f"{path}:{n}: {level}: ")
    blank = sum(1 for c in cases if not c[0].strip())
    errors = sum(1 for c in cases if c[1] == "error")
    assert r.blank == blank and r.skipped == errors
    assert r.records == len(cases) - blank == r.kept + r.skipped      # counts add up
    assert r.warnings == sum(1 for c in cases if c[1] == "warning")
    assert sum(r.skipped_by_reason.values()) == r.skipped


def test_cli_exit_codes(tmp_path, capsys):
    clean = tmp_path / "clean" / "v1" / "tuning" / "train"
    write(clean / "a.jsonl", SFT_CASES[:2])
    assert main(["data", "validate", str(tmp_path / "clean"), "--data-version", "v1"]) == 0
    warn = tmp_path / "warn" / "v1" / "preference" / "train"
    write(warn / "p.jsonl", [DPO_CASES[0], DPO_CASES[-1]])
    assert main(["data", "validate", str(tmp_path / "warn" / "v1")]) == 1
    bad = tmp_path / "bad" / "v1" / "tuning" / "train"
    write(bad / "b.jsonl", SFT_CASES)
    capsys.readouterr()
    assert main(["data", "validate", str(tmp_path / "bad"), "--data-version", "v1"]) == 2
    out = capsys.readouterr().out
    assert f"{bad / 'b.jsonl'}:5: error: invalid JSON" in out
    assert "skipped" in out and "Traceback" not in out


def test_cli_missing_folder_is_one_sentence(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path), "--data-version", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "folder not found" in err and "Traceback" not in err


@pytest.mark.parametrize("final_newline", [True, False])
def test_cache_reader_agrees_with_the_validator(tmp_path, monkeypatch, final_newline):
    """The tokeniser reads byte ranges of the file; its report must equal the validator's."""
    from tunekit.data import cache
    from tunekit.model import tiny_tokenizer_dir

    tok_dir = tiny_tokenizer_dir()
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "CHUNK_RECORDS", 3)     # ranges split the file in many places
    path = write(tmp_path / "sft.jsonl", SFT_CASES, final_newline)
    tf = cache.tokenize_file(path, "sft", tok_dir, show_progress=False)
    want = validate_file(path, "sft")
    assert tf.report.summary() == want.summary()
    assert [str(p) for p in tf.report.problems] == [str(p) for p in want.problems]
    assert [int(n) for n in tf.array("lines")] == [n for n, c in enumerate(SFT_CASES, 1)
                                                   if c[0].strip() and c[1] != "error"]
