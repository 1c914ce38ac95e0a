"""A corpus of hostile data, built at test time, through every reader a person meets:
`tunekit data validate`, the tokenising path (the mixture training uses) and the inspection
notebook. Every planted problem is reported exactly once, as `path: ...` or `path:line: ...`,
the counts equal the number planted, nothing hangs (a FIFO) and no output holds a traceback.

Unreadable files: the tests run as root here and in CI, and root reads a mode-000 file anyway.
So, as root, the three readers run under `setpriv` without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH:
still root, but the kernel then refuses the mode-000 file with a real EACCES. As another user a
mode-000 file is unreadable by itself. Where neither works, that one case is not planted (and the
test says so in its output) instead of being faked.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYS = {"role": "system", "content": "s"}
HUGE_BYTES = 50 * 2**20  # one valid 50 MB line


@dataclass(frozen=True)
class Planted:
    rel: str          # path under the version folder
    line: int         # 0 = the file as a whole
    level: str        # error | warning
    fragment: str     # what the message must say


def sft(i, answer=None, **extra) -> dict:
    return {"messages": [SYS, {"role": "user", "content": f"q{i}"},
                         {"role": "assistant", "content": f"a{i}" if answer is None else answer}], **extra}


def dpo(i, chosen="c", rejected=None) -> dict:
    return {"messages": [SYS, {"role": "user", "content": f"p{i}"}], "chosen_response": chosen,
            "rejected_response": f"r{i}" if rejected is None else rejected}


def jl(*records) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def drop_dac() -> list[str] | None:
    """The command prefix under which a mode-000 file is really unreadable; None if none exists."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        caps = "-dac_override,-dac_read_search"
        probe = subprocess.run(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--", "true"],
                               capture_output=True)
        if probe.returncode == 0:
            return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    return None


def build_corpus(root: Path, unreadable: bool) -> list[Planted]:
    """Write the corpus under root/v1; returns what was planted."""
    sft_dir = root / "v1" / "tuning" / "train"
    dpo_dir = root / "v1" / "preference" / "train"
    sft_dir.mkdir(parents=True)
    dpo_dir.mkdir(parents=True)
    planted: list[Planted] = []

    def plant(rel, line, level, fragment):
        planted.append(Planted(rel, line, level, fragment))

    t = "tuning/train/"
    # --- whole files that cannot be read
    (sft_dir / "dir.jsonl").mkdir()
    plant(t + "dir.jsonl", 0, "error", "a directory")
    (sft_dir / "loop.jsonl").symlink_to("loop.jsonl")
    plant(t + "loop.jsonl", 0, "error", "symlink loop")
    (sft_dir / "dangling.jsonl").symlink_to("gone.jsonl")
    plant(t + "dangling.jsonl", 0, "error", "broken symlink")
    os.mkfifo(sft_dir / "fifo.jsonl")
    plant(t + "fifo.jsonl", 0, "error", "a FIFO")
    (sft_dir / "packed.jsonl").write_bytes(gzip.compress(jl(sft(100), sft(101))))
    plant(t + "packed.jsonl", 0, "error", "gzip-compressed")
    (sft_dir / "utf16.jsonl").write_bytes(jl(sft(110), sft(111)).decode().encode("utf-16"))
    plant(t + "utf16.jsonl", 0, "error", "UTF-16")
    (sft_dir / "mac.jsonl").write_bytes(jl(sft(120), sft(121), sft(122)).replace(b"\n", b"\r"))
    plant(t + "mac.jsonl", 0, "error", "bare CR")
    if unreadable:
        (sft_dir / "secret.jsonl").write_bytes(jl(sft(130)))
        (sft_dir / "secret.jsonl").chmod(0)
        plant(t + "secret.jsonl", 0, "error", "permission denied")
    # --- files with nothing to train on, and data the reader does not take
    (sft_dir / "empty.jsonl").write_bytes(b"")
    plant(t + "empty.jsonl", 0, "warning", "is empty")
    (sft_dir / "blank.jsonl").write_bytes(b"\n   \n")
    plant(t + "blank.jsonl", 0, "warning", "only 2 blank line(s)")
    (sft_dir / "notes.json").write_bytes(jl(sft(140)))
    plant(t + "notes.json", 0, "warning", "only files named *.jsonl are data")
    (sft_dir / "SHOUT.JSONL").write_bytes(jl(sft(141)))
    plant(t + "SHOUT.JSONL", 0, "warning", "only files named *.jsonl are data")
    # --- bad lines among good ones
    lines = [
        (jl(sft(1))[:-1], None, ""),
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "error", "nested too deeply"),
        (b'{"messages": [], "n": ' + b"7" * 5000 + b"}", "error", "more than 4300 digits"),
        (jl(sft(2, answer="x"))[:-1].replace(b'"x"', b'"\\ud800"'), "error", "surrogate"),
        (b'{"messages": [{"role": "system", "content": "s", "content": "t"}]}', "error", "appears twice"),
        (jl(sft(3, answer="tab"))[:-1].replace(b"tab", b"\t"), "error", "Invalid control character at column"),
        (jl(sft(4, answer="nul\u0000"))[:-1], "warning", "NUL character"),
        (jl(sft(5, answer="\u00a0\u200b\u2060"))[:-1], "warning", "only invisible characters"),
        (jl(sft(6, ID="q-1"))[:-1], None, ""),
        (jl(sft(7, ID="q-1"))[:-1], "warning", "the same ID as line 9"),
        (jl(sft(8))[:-1], None, ""),
        (jl(sft(8))[:-1], "warning", "exact duplicate of line 11"),
        (jl(sft(9))[:-1], None, ""),
    ]
    (sft_dir / "lines.jsonl").write_bytes(b"\n".join(raw for raw, _, _ in lines) + b"\n")
    for n, (_, level, fragment) in enumerate(lines, 1):
        if level:
            plant(t + "lines.jsonl", n, level, fragment)
    # --- the same record in another file
    (sft_dir / "other.jsonl").write_bytes(jl(sft(9), sft(20)))
    plant(t + "other.jsonl", 1, "warning", "exact duplicate of ")
    # --- one valid line of 50 MB, then a good one
    with open(sft_dir / "huge.jsonl", "wb") as f:
        f.write(jl(sft(30, answer="x" * HUGE_BYTES)) + jl(sft(31)))
    plant(t + "huge.jsonl", 1, "error", "more than the 1.0 MiB a record may have")
    # --- DPO
    pairs = [
        (jl(dpo(1))[:-1], None, ""),
        (jl(dpo(2, chosen=""))[:-1], "warning", "chosen_response is empty"),
        (jl(dpo(3, rejected="\u3000\u200b"))[:-1], "warning", "rejected_response is empty to a reader"),
        (jl(dpo(1))[:-1], "warning", "exact duplicate of line 1"),
        (jl(dpo(4, chosen="y"))[:-1].replace(b'"y"', b'"\\udfff"'), "error", "surrogate"),
        (jl(dpo(5))[:-1], None, ""),
    ]
    (dpo_dir / "pairs.jsonl").write_bytes(b"\n".join(raw for raw, _, _ in pairs) + b"\n")
    for n, (_, level, fragment) in enumerate(pairs, 1):
        if level:
            plant("preference/train/pairs.jsonl", n, level, fragment)
    return planted


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    prefix = drop_dac()
    root = tmp_path_factory.mktemp("hostile")
    planted = build_corpus(root, unreadable=prefix is not None)
    if prefix is None:
        print("note: mode-000 case not planted (root without setpriv cannot be refused a read)")
    return root, planted, prefix or []


def run(prefix, args, tmp: Path, timeout=900):
    env = {**os.environ, "TUNEKIT_RUNS_DIR": str(tmp / "runs"), "TUNEKIT_CACHE_DIR": str(tmp / "cache")}
    return subprocess.run([*prefix, sys.executable, *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def split_problem(line: str, version: Path):
    """(rel path, line, level, message) of a printed problem, or None for other output."""
    head = str(version) + "/"
    if not line.startswith(head):
        return None
    rest = line[len(head):]
    for level in ("error", "warning"):
        where, sep, message = rest.partition(f": {level}: ")
        if sep:
            path, _, n = where.rpartition(":")
            return (path, int(n), level, message) if path and n.isdigit() else (where, 0, level, message)
    return None


def assert_matches(found: list[tuple[str, int, str, str]], planted: list[Planted]) -> None:
    by_place = {}
    for rel, n, level, message in found:
        by_place.setdefault((rel, n), []).append((level, message))
    missing, extra = [], dict(by_place)
    for p in planted:
        got = by_place.get((p.rel, p.line), [])
        if len(got) == 1 and got[0][0] == p.level and p.fragment in got[0][1]:
            extra.pop((p.rel, p.line))
        else:
            missing.append((p, got))
    assert not missing, "\n".join(f"{p}: got {g}" for p, g in missing)
    assert not extra, extra
    assert len(found) == len(planted)
    assert not any(" at at " in m for *_, m in found)


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and 'File "' not in text, text[-3000:]


@pytest.mark.slow
def test_validate_cli_reports_every_planted_problem_once(corpus, tmp_path):
    root, planted, prefix = corpus
    out = run(prefix, ["-m", "tunekit.cli", "data", "validate", str(root), "--data-version", "v1"],
              tmp_path, timeout=300)
    no_traceback(out.stdout, out.stderr)
    assert out.returncode == 2, out.stderr
    found = [p for p in (split_problem(ln, root / "v1") for ln in out.stdout.splitlines()) if p]
    assert_matches(found, planted)
    errors = sum(p.level == "error" for p in planted)
    warnings = len(planted) - errors
    assert f"{errors} error(s), {warnings} warning(s)" in out.stdout


TOKENISE = """
import json, sys
from tunekit.data.mixing import build_mixture
out = []
for kind in ("sft", "dpo"):
    mix = build_mixture({"data_dir": sys.argv[1], "data_version": "v1", "tokenizer": "tiny",
                         "on_error": "skip", "workers": 1}, kind, show_progress=False)
    out += [str(p) for r in mix.reports for p in r.problems]
    out += [n for n in mix.notes if "not read" in n]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_tokenising_path_reports_every_planted_problem_once(corpus, tmp_path):
    """What training reads (on_error='skip'): every line error skipped with its path:line, every
    unreadable file left out with its reason, the rest tokenised (the 50 MB line refused unread)."""
    root, planted, prefix = corpus
    out = run(prefix, ["-c", TOKENISE, str(root)], tmp_path)
    no_traceback(out.stderr)
    assert out.returncode == 0, out.stderr[-3000:]
    found = []
    for item in json.loads(out.stdout.splitlines()[-1]):
        problem = split_problem(item, root / "v1")
        if problem is None:  # a mixture note about a name it does not read: "x.json: not read: ..."
            name, _, message = item.partition(": not read: ")
            problem = (f"tuning/train/{name}", 0, "warning", message)
        found.append(problem)
    assert_matches(found, planted)


@pytest.mark.slow
def test_tokenising_path_raises_one_sentence_for_each_kind_of_bad_file(corpus, tmp_path):
    """on_error='raise' (the default): the first bad file stops training with its path (and line)."""
    root, planted, prefix = corpus
    for p in planted:
        if p.level != "error":
            continue
        name = Path(p.rel).name.split(".")[0]
        kind = "dpo" if p.rel.startswith("preference") else "sft"
        script = ("import sys\nfrom tunekit.errors import UserError\n"
                  "from tunekit.data.mixing import build_mixture\n"
                  "try:\n    build_mixture({'data_dir': sys.argv[1], 'data_version': 'v1', "
                  f"'datasets': {{'{name}': {{}}}}, 'tokenizer': 'tiny'}}, '{kind}', show_progress=False)\n"
                  "except UserError as e:\n    print('error:', e)\n")
        out = run(prefix, ["-c", script, str(root)], tmp_path, timeout=300)
        no_traceback(out.stdout, out.stderr)
        where = f"{root / 'v1' / p.rel}:{p.line}" if p.line else str(root / "v1" / p.rel)
        assert out.stdout.startswith("error: ") and where in out.stdout and p.fragment in out.stdout, \
            (p, out.stdout[-2000:])


@pytest.mark.slow
def test_inspection_notebook_counts_every_planted_problem(corpus, tmp_path):
    root, planted, prefix = corpus
    out = run(prefix, ["-m", "tunekit.cli", "notebooks", "run", "inspect_data", "-p", "data_dir", str(root),
                       "-p", "data_version", "v1", "-p", "sft_datasets", "{}", "-p", "dpo_datasets", "{}",
                       "-p", "on_error", "skip", "-p", "run_name", "hostile"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "inspect_data" / "hostile"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["validation_errors"] == sum(p.level == "error" for p in planted)
    assert summary["validation_warnings"] == sum(p.level == "warning" for p in planted)
    nb = json.loads((run_dir / "10_inspect_data.ipynb").read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    no_traceback(*(o.get("text", "") for o in outputs if o.get("output_type") == "stream"))


def test_report_streams_as_files_are_read(tmp_path, monkeypatch):
    """Each file's problems are handed on before the next file is opened (a slow or huge file
    never hides the problems already found)."""
    from tunekit.data import schema
    from tunekit.data.files import scan_version
    from tunekit.data.validate import validate_files

    folder = tmp_path / "v1" / "tuning" / "train"
    folder.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (folder / f"{name}.jsonl").write_bytes(b"{bad\n" + jl(sft(name)))
    events = []
    real = schema.iter_lines
    monkeypatch.setattr(schema, "iter_lines", lambda path, *a: (events.append(("open", Path(path).name)),
                                                                 real(path, *a))[1])
    validate_files(scan_version(tmp_path / "v1"), on_problem=lambda p: events.append(("problem", Path(p.path).name)))
    assert events == [("open", "a.jsonl"), ("problem", "a.jsonl"), ("open", "b.jsonl"),
                      ("problem", "b.jsonl"), ("open", "c.jsonl"), ("problem", "c.jsonl")]


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_a_tokenizer_failure_names_its_line_and_obeys_on_error(tmp_path, monkeypatch, on_error):
    """Whatever the tokenizer refuses (simulated here: it raises on one text, as it did on lone
    surrogates before validation caught them) is located at path:line and skipped or raised."""
    from tunekit.data import encode
    from tunekit.data.mixing import build_mixture
    from tunekit.errors import UserError

    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "v1" / "tuning" / "train" / "d.jsonl"
    data.parent.mkdir(parents=True)
    data.write_bytes(jl(sft(1), sft(2, answer="POISON"), sft(3)))
    real = encode.encode_batch

    def picky(tok, texts):
        if any("POISON" in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return real(tok, texts)

    monkeypatch.setattr(encode, "encode_batch", picky)
    cfg = {"data_dir": str(tmp_path), "data_version": "v1", "tokenizer": "tiny", "on_error": on_error}
    if on_error == "raise":
        with pytest.raises(UserError, match=rf"{data}:2: error: the tokenizer cannot encode this record \(TypeError"):
            build_mixture(cfg, "sft", show_progress=False)
        return
    mix = build_mixture(cfg, "sft", show_progress=False)
    [report] = mix.reports
    assert (report.records, report.kept, report.skipped) == (3, 2, 1)
    assert [str(p) for p in report.problems] == [
        f"{data}:2: error: the tokenizer cannot encode this record (TypeError: TextEncodeInput must be "
        "Union[TextInputSequence, Tuple[InputSequence, InputSequence]])"]
    assert [int(n) for n in mix.sources[0].file.array("lines")] == [1, 3]
