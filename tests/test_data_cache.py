"""Content-addressed cache: every key input invalidates, nothing else does; concurrent builders
build once; multi-process tokenisation gives the same arrays; a failed build leaves nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tunekit import template
from tunekit.data import cache
from tunekit.model import tiny_tokenizer_dir


def sft_line(i: int) -> str:
    msgs = [{"role": "system", "content": "以下は指示です。"},
            {"role": "user", "content": f"{i} + {i} は？"},
            {"role": "assistant", "content": f"{i} + {i} = {2 * i}\nよって、答えは $\\boxed{{{2 * i}}}$ です。"}]
    return json.dumps({"messages": msgs}, ensure_ascii=False)


def dpo_line(i: int) -> str:
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": f"{i} の2倍は？"}]
    return json.dumps({"messages": msgs, "chosen_response": f"{2 * i}", "rejected_response": f"{i}"},
                      ensure_ascii=False)


@pytest.fixture(scope="module")
def tok_dir():
    return tiny_tokenizer_dir()   # resolved before the tests point the cache elsewhere


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(sft_line(i) for i in range(40)) + "\n", encoding="utf-8")
    return path


def arrays(tf):
    return {n: np.asarray(tf.array(n)) for n in ("tokens", "mask", "offsets", "lines", "hashes", "loss_tokens")}


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_unchanged_inputs_reuse_the_cache(data, tok_dir):
    first = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    again = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    assert first.built and not again.built and first.dir == again.dir
    assert len(again) == 40 and same(arrays(first), arrays(again))
    copy = data.with_name("renamed.jsonl")      # content-addressed: same bytes, other name
    shutil.copy(data, copy)
    moved = cache.tokenize_file(copy, "sft", tok_dir, show_progress=False)
    assert not moved.built and moved.report.path == str(copy)


def test_data_byte_change_invalidates(data, tok_dir):
    a = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    data.write_text(data.read_text(encoding="utf-8").replace("1 + 1 = 2", "1 + 1 = 3", 1), encoding="utf-8")
    b = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    assert b.built and b.dir != a.dir


def test_tokenizer_change_invalidates(data, tok_dir, tmp_path):
    a = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    other = tmp_path / "tok2"
    shutil.copytree(tok_dir, other)
    cfg = json.loads((other / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["model_max_length"] = 77
    (other / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    b = cache.tokenize_file(data, "sft", other, show_progress=False)
    assert b.built and b.dir != a.dir
    same_copy = tmp_path / "tok3"     # a byte-identical copy elsewhere is the same tokenizer
    shutil.copytree(tok_dir, same_copy)
    assert not cache.tokenize_file(data, "sft", same_copy, show_progress=False).built


def test_template_change_invalidates(data, tok_dir, monkeypatch):
    a = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    monkeypatch.setattr(template, "TEMPLATE_VERSION", template.TEMPLATE_VERSION + "-edited")
    b = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    assert b.built and b.dir != a.dir


def test_builder_code_change_invalidates(data, tok_dir, monkeypatch):
    a = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    monkeypatch.setattr(cache, "CACHE_FORMAT", cache.CACHE_FORMAT + 1)   # part of code_digest
    b = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    assert b.built and b.dir != a.dir


def test_parameter_change_invalidates(data, tok_dir, tmp_path):
    a = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    b = cache.tokenize_file(data, "sft", tok_dir, style="official", show_progress=False)
    assert b.built and b.dir != a.dir
    pref = tmp_path / "p.jsonl"
    pref.write_text("\n".join(dpo_line(i) for i in range(10)) + "\n", encoding="utf-8")
    c = cache.tokenize_file(pref, "dpo", tok_dir, show_progress=False)
    d = cache.tokenize_file(pref, "dpo", tok_dir, dpo_append_eos=True, show_progress=False)
    assert c.built and d.built and c.dir != d.dir
    assert d.pair(0)[1][-1] == 2 and c.pair(0)[1][-1] != 2


def test_failed_build_leaves_nothing(data, tok_dir, monkeypatch, tmp_path):
    def boom(*a, **k):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(cache, "_build", boom)
    with pytest.raises(RuntimeError):
        cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    root = tmp_path / "cache" / "data"
    assert [p.name for p in root.iterdir() if p.name != ".locks"] == []
    monkeypatch.undo()
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    assert cache.tokenize_file(data, "sft", tok_dir, show_progress=False).built


def test_multiprocess_tokenisation_equals_serial(data, tok_dir, monkeypatch, tmp_path):
    serial = cache.tokenize_file(data, "sft", tok_dir, workers=1, show_progress=False)
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache2"))
    monkeypatch.setattr(cache, "PARALLEL_MIN_RECORDS", 1)
    monkeypatch.setattr(cache, "CHUNK_RECORDS", 7)    # several chunks, merged in order
    parallel = cache.tokenize_file(data, "sft", tok_dir, workers=2, show_progress=False)
    assert parallel.built and serial.dir != parallel.dir
    assert same(arrays(serial), arrays(parallel))
    assert parallel.report.summary() == {**serial.report.summary(), "path": parallel.report.path}


CHILD = """
import sys, time, pathlib
from tunekit.data import cache
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.01)
tf = cache.tokenize_file(sys.argv[3], "sft", sys.argv[4], show_progress=False)
print(tf.built, tf.dir, len(tf))
"""


def test_concurrent_builders_build_once(data, tok_dir, tmp_path):
    env = {**os.environ, "TUNEKIT_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    go = tmp_path / "go"
    procs, readies = [], []
    for k in range(3):
        ready = tmp_path / f"ready{k}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, str(ready), str(go), str(data), str(tok_dir)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 120
    while not all(r.exists() for r in readies) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()   # all three start tokenising at the same moment
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [o[0].split() for o in outs]
    assert sorted(r[0] for r in results) == ["False", "False", "True"]   # exactly one built
    assert len({r[1] for r in results}) == 1 and {r[2] for r in results} == {"40"}


@pytest.mark.parametrize("style", ["kit", "official"])
def test_cached_arrays_equal_the_builders(tmp_path, monkeypatch, tok_dir, style):
    """What the cache stores per record is exactly encode.sft_ids / encode.dpo_ids."""
    from tunekit.data import encode

    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    tok = cache.load_tokenizer(tok_dir, full=True)
    recs = [json.loads(sft_line(i)) for i in range(5)]
    recs.append({"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "a"},
                              {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                              {"role": "assistant", "content": ""}, {"role": "user", "content": "x"}]})
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
    tf = cache.tokenize_file(path, "sft", tok_dir, style=style, show_progress=False)
    for i, r in enumerate(recs):
        ids, mask = tf.sft(i)
        assert (ids.tolist(), mask.tolist()) == encode.sft_ids(r["messages"], tok, style=style)
        assert tf.array("loss_tokens")[i] == sum(mask)
    pref = tmp_path / "p.jsonl"
    drecs = [json.loads(dpo_line(i)) for i in range(3)]
    pref.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in drecs) + "\n", encoding="utf-8")
    tp = cache.tokenize_file(pref, "dpo", tok_dir, style=style, show_progress=False)
    for i, r in enumerate(drecs):
        p, c, rj = tp.pair(i)
        prompt, chosen, rejected = encode.dpo_ids(r, tok, style=style)
        assert (p.tolist(), p.tolist() + c.tolist(), p.tolist() + rj.tolist()) == (prompt, chosen, rejected)


UNGUARDED = """
import sys
from tunekit.data import cache
cache.PARALLEL_MIN_RECORDS = 1
cache.CHUNK_RECORDS = 10
tf = cache.tokenize_file(sys.argv[1], "sft", sys.argv[2], workers=2, show_progress=False)
print("records", len(tf), "processes", tf.manifest["build"]["processes"])
"""


def test_unguarded_script_falls_back_instead_of_hanging(data, tok_dir, tmp_path):
    """Spawned workers re-import the main script; without a __main__ guard they die at start.
    The build must then finish in-process (with a hint), not respawn workers forever."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED, encoding="utf-8")
    env = {**os.environ, "TUNEKIT_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, str(script), str(data), str(tok_dir)], env=env,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "records 40 processes 1" in out.stdout
    assert "guard the script's entry point" in out.stderr


# ---------------------------------------------------------------- damaged entries, full disks
def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path, at=-4):
    """Flip the bits of one byte (default: in the last token) without changing the size."""
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _other_same_shape(d):
    """Replace tokens.npy with another array of the same dtype and shape (e.g. copied from
    another entry): the first record then starts with eos instead of bos."""
    tokens = np.load(d / "tokens.npy")
    np.save(d / "tokens.npy", np.roll(tokens, 1))


CHANGED = "does not match its checksum in the manifest"
DAMAGE = {
    "flipped bytes in tokens.npy": (lambda d: _flip(d / "tokens.npy"), f"tokens.npy {CHANGED}"),
    "tokens.npy of the same shape": (_other_same_shape, f"tokens.npy {CHANGED}"),
    "truncated tokens.npy": (lambda d: _truncate(d / "tokens.npy"), f"tokens.npy {CHANGED}"),
    "missing mask.npy": (lambda d: (d / "mask.npy").unlink(), "mask.npy is missing"),
    "garbage manifest.json": (lambda d: (d / "manifest.json").write_bytes(b"\x00{garbage"),
                              "manifest.json is not valid JSON"),
    "empty manifest.json": (lambda d: (d / "manifest.json").write_bytes(b""), "manifest.json is empty"),
    "missing manifest.json": (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
    "array of another shape": (lambda d: np.save(d / "lines.npy", np.zeros(3, np.int32)),
                               f"lines.npy {CHANGED}"),
    "manifest without checksums": (lambda d: (d / "manifest.json").write_text(json.dumps(
        {**json.loads((d / "manifest.json").read_text()), "arrays": {"tokens": {"dtype": "int32"}}})),
        "manifest.json lacks the array checksums"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_says_why_and_is_rebuilt(data, tok_dir, capsys, damage):
    first = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    want = {k: np.array(v) for k, v in arrays(first).items()}  # copies: the files are damaged next
    harm, cause = DAMAGE[damage]
    harm(first.dir)
    capsys.readouterr()
    again = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    err = capsys.readouterr().err
    assert f"cache entry {first.dir} (for {data}) is damaged: {cause}" in err and "rebuilding it" in err
    assert "Traceback" not in err
    assert again.built and again.rebuilt_because.startswith(cause) and again.dir == first.dir
    assert same(arrays(again), want)   # the rebuilt entry, never the damaged one
    assert cache.entry_problem(again.dir, again.manifest["key"]) is None
    third = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    assert not third.built and third.rebuilt_because is None


@pytest.mark.parametrize("how", ["ENOSPC on an array", "ENOSPC"])
def test_disk_full_during_a_build_is_one_sentence_simulated(data, tok_dir, monkeypatch, how):
    """A full disk simulated by patching the write (numpy reports it as `N requested and M
    written`, other writes as ENOSPC); the real thing on a small tmpfs is the next test."""
    import errno

    from tunekit import atomic
    from tunekit.data import cache_entry
    from tunekit.errors import UserError

    if how == "ENOSPC":
        def full(path, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        monkeypatch.setattr(atomic, "write_bytes", full)   # the manifest, written last
    else:
        def full(dtype, length):   # the first write of every array; errno only, like os.write
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(cache_entry, "npy_header", full)
    with pytest.raises(UserError, match=r"^disk full at .*: the cache entry for .*d\.jsonl could not be "
                                        r"written \(writing .*\) \(free space on that disk, or set "
                                        r"TUNEKIT_CACHE_DIR") as exc:
        cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    root = cache.cache_root() / "data"
    assert str(root) in str(exc.value)
    assert not [p for p in root.iterdir() if p.name != ".locks"]   # nothing half-written kept


FULL_DISK = """
import sys
from tunekit.data.cache import tokenize_file
from tunekit.errors import UserError
try:
    tokenize_file(sys.argv[1], "sft", sys.argv[2], show_progress=False)
except UserError as e:
    print("error:", e)
"""


def test_disk_full_during_a_build_on_a_real_small_disk(data, tok_dir, tmp_path):
    """A real full disk: a 64 KiB tmpfs as the cache, mounted in a private mount namespace (so
    nothing outlives the child process). Needs root and unshare; skipped, saying so, without."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a real full disk needs root and unshare (the simulated test covers the path)")
    cache_dir = tmp_path / "small-disk"
    cache_dir.mkdir()
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(sft_line(i) for i in range(2000)) + "\n", encoding="utf-8")
    private = ["unshare", "-m", "--propagation", "private", "sh", "-c"]
    mount = f"mount -t tmpfs -o size=64k tmpfs {cache_dir}"
    probe = subprocess.run([*private, mount], capture_output=True, text=True, timeout=60)
    if probe.returncode:  # e.g. a container without CAP_SYS_ADMIN
        pytest.skip(f"cannot mount a tmpfs here ({probe.stderr.strip()[:200]}); the simulated test covers the path")
    env = {**os.environ, "TUNEKIT_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([*private, f"{mount} && exec {sys.executable} -c '{FULL_DISK}' {big} {tok_dir}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"error: disk full at {cache_dir / 'data'}/"), out.stdout + out.stderr
    assert "could not be written" in out.stdout and "Traceback" not in out.stdout + out.stderr


# ---------------------------------------------------------------- O(1) opens, verification cost
def _count_hashes(monkeypatch):
    """Record the name of every file hashed (data, tokenizer files, cache arrays)."""
    from tunekit.data import fingerprint

    seen: list[str] = []
    real = fingerprint.hash_file

    def counted(path, algo):
        seen.append(os.path.basename(path))
        return real(path, algo)

    monkeypatch.setattr(fingerprint, "hash_file", counted)
    return seen


def test_a_warm_open_hashes_nothing_and_a_changed_file_is_hashed_again(data, tok_dir, monkeypatch):
    """Opening re-hashed the data and tokenizer files every time (most of an open's cost); now a
    file is hashed again only when its stat fingerprint changes, arrays only when theirs does."""
    from tunekit.data import fingerprint

    monkeypatch.setattr(fingerprint, "RACY_S", 0.0)   # this test's files are seconds old at most
    first = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    seen = _count_hashes(monkeypatch)
    again = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    assert not again.built and seen == []
    os.utime(data)                                     # touched: same bytes, new mtime
    again = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    assert not again.built and seen == [data.name]
    seen.clear()
    os.utime(first.dir / "mask.npy")                   # an array touched: verified again, still whole
    again = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    assert not again.built and seen == ["mask.npy"]
    seen.clear()
    with open(data, "a", encoding="utf-8") as f:       # new content: a new key, a new entry
        f.write(sft_line(99) + "\n")
    changed = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    assert changed.built and len(changed) == 41 and data.name in seen


def test_a_file_changed_within_the_timestamp_granularity_is_hashed_again(tmp_path, monkeypatch):
    """Racy writes: when a file's fingerprint cannot show a change (a coarse clock, the same
    size), a digest taken less than RACY_S after the file's last change is not trusted."""
    from tunekit.data import fingerprint

    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "x.jsonl"
    f.write_text("aaaa", encoding="utf-8")
    frozen = fingerprint.stat_key(f)
    monkeypatch.setattr(fingerprint, "stat_key", lambda _p: frozen)   # the clock did not move
    first = fingerprint.digest(f)
    f.write_text("bbbb", encoding="utf-8")
    assert fingerprint.digest(f) != first


def test_an_open_file_pickles_without_its_data(data, tok_dir):
    import pickle

    tf = cache.tokenize_file(data, "sft", tok_dir, show_progress=False)
    ids = [tf.sft(i)[0] for i in range(len(tf))]
    assert len(tf._maps) == 3
    back = pickle.loads(pickle.dumps(tf))
    assert len(pickle.dumps(tf)) < 20_000 and back._maps == {}
    assert all(np.array_equal(back.sft(i)[0], ids[i]) for i in range(len(tf)))


# ---------------------------------------------------------------- tokenizer facts memo (issue 19)
@pytest.fixture(scope="module")
def llmjp_dir():
    from tunekit.model import llmjp_tokenizer_dir

    try:
        return llmjp_tokenizer_dir()
    except Exception as exc:  # noqa: BLE001 - the shared fixture is absent in this clone
        pytest.skip(f"no llm-jp tokenizer fixture ({exc})")


def test_a_second_build_with_the_same_tokenizer_loads_no_hf_tokenizer(data, llmjp_dir, monkeypatch, tmp_path):
    """The HF load, probe and sentencepiece-twin check run once per tokenizer (their result is
    memoised by the tokenizer files' digest); a later build of another file uses the memo, loads no
    HF tokenizer, and gives exactly the arrays of a build that checked everything itself."""
    first = cache.tokenize_file(data, "sft", llmjp_dir, workers=1, show_progress=False)
    assert first.manifest["build"]["encoder"] == "sentencepiece"
    assert len(list((tmp_path / "cache" / "tokenizers").glob("*.json"))) == 1
    other = tmp_path / "other.jsonl"
    other.write_text(data.read_text(encoding="utf-8") + sft_line(99) + "\n", encoding="utf-8")

    def no_hf(*a, **k):
        raise AssertionError("the HF tokenizer was loaded although its facts are memoised")

    with monkeypatch.context() as m:
        m.setattr(cache, "load_tokenizer", no_hf)
        memo = cache.tokenize_file(other, "sft", llmjp_dir, workers=1, show_progress=False)
    assert memo.built and memo.manifest["build"]["encoder"] == "sentencepiece"
    assert memo.manifest["tokenizer_info"] == first.manifest["tokenizer_info"]
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "fresh"))   # no memo: everything checked
    checked = cache.tokenize_file(other, "sft", llmjp_dir, workers=1, show_progress=False)
    assert same(arrays(memo), arrays(checked))


def test_changed_tokenizer_files_are_checked_again(data, llmjp_dir, monkeypatch, tmp_path):
    """The memo is keyed by the tokenizer files' digest: a tokenizer whose files differ (here an
    added token the sentencepiece twin does not model) gets its own check, and the HF encoder."""
    cache.tokenize_file(data, "sft", llmjp_dir, workers=1, show_progress=False)
    other = tmp_path / "tok"
    shutil.copytree(llmjp_dir, other)
    spec = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"][0]["lstrip"] = True   # whitespace-eating: no twin
    (other / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    tf = cache.tokenize_file(data, "sft", other, workers=1, show_progress=False)
    assert tf.manifest["build"]["encoder"] == "tokenizers"
    assert len(list((tmp_path / "cache" / "tokenizers").glob("*.json"))) == 2


# ---------------------------------------------------------------- chunk-wide text scan (issue 19)
@pytest.mark.parametrize("escaped", [
    '{"role": "user", "content": "x<\\/s>y"}',            # "\/" reads as "/": the text holds </s>
    '{"role": "user", "content": "x\\u003c|eos|>y"}',     # an escaped "<"
    '{"role": "user", "content": "x\\u0000y"}',           # NUL
    '{"role": "user", "content": "x\\ud800y"}',           # a lone surrogate (an error)
    '{"role": "user", "content": "x<|eos|>y"}',           # literal special-token text
])
def test_one_hostile_line_among_plain_ones_is_still_reported(tmp_path, monkeypatch, tok_dir, escaped):
    """The cache skips the per-string searches for surrogates, NUL and special-token text when one
    search over the whole chunk's raw bytes rules them out; a single line that holds one, however
    it is escaped, must still be reported exactly as the validator reports it."""
    from tunekit.data.validate import validate_file

    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    lines = [sft_line(i) for i in range(30)]
    lines[17] = ('{"messages": [{"role": "system", "content": "s"}, ' + escaped
                 + ', {"role": "assistant", "content": "a"}]}')
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tf = cache.tokenize_file(path, "sft", tok_dir, show_progress=False)
    want = validate_file(path, "sft")
    assert [(p.line, p.level, p.message) for p in tf.report.problems] == \
        [(p.line, p.level, p.message) for p in want.problems]
    assert [p.line for p in tf.report.problems] == [18]


def test_plain_chunks_are_recognised_and_give_the_same_problems():
    """`texts_are_plain` is True only where skipping the searches cannot change a result."""
    from tunekit.data import schema

    plain = [sft_line(i).encode() for i in range(5)]
    assert schema.texts_are_plain(plain)
    for hostile in (b'"a\\u0041"', b'"<\\/s>"', b'"<pad>"', b'"\\\\u"'):
        assert not schema.texts_are_plain(plain + [hostile])
    for raw in plain:
        obj = json.loads(raw)
        assert schema.check_record(obj, "sft", scan_texts=False) == schema.check_record(obj, "sft")


@pytest.mark.parametrize("damage", ['{"garbage', '{"tokenizer_sha256": "%s", "info": {}, "twin": null}',
                                    '{"tokenizer_sha256": "%s", "info": %s, "twin": {"specials": {}}}'])
def test_a_damaged_tokenizer_memo_is_checked_again(data, llmjp_dir, tmp_path, damage):
    """A torn or foreign memo file is never trusted: the facts are established again."""
    first = cache.tokenize_file(data, "sft", llmjp_dir, workers=1, show_progress=False)
    [memo] = (tmp_path / "cache" / "tokenizers").glob("*.json")
    rec = json.loads(memo.read_text(encoding="utf-8"))
    memo.write_text(damage.replace("%s", rec["tokenizer_sha256"], 1).replace("%s", json.dumps(rec["info"])),
                    encoding="utf-8")
    shutil.rmtree(tmp_path / "cache" / "data")
    again = cache.tokenize_file(data, "sft", llmjp_dir, workers=1, show_progress=False)
    assert again.built and again.manifest["build"]["encoder"] == "sentencepiece"
    assert same(arrays(first), arrays(again))
    assert json.loads(memo.read_text(encoding="utf-8")) == rec   # rewritten whole


@pytest.mark.parametrize("per_range", [1, 3, 7, 1000])
def test_line_ranges_cover_the_file_in_whole_lines(tmp_path, monkeypatch, per_range):
    """Byte ranges of `per_range` whole lines each, in order, covering every byte: checked against
    Python's own line split on files with blank lines, CRLF, no final newline, a line longer than
    the read block, and empty files."""
    from tunekit.data import schema

    rng = np.random.default_rng(per_range)
    cases = [b"", b"\n", b"x", b"a\nb", b"a\nb\n", b"\n\n\n", b"a\r\nb\r\n\r\nc"]
    cases += [b"".join(b"y" * int(rng.integers(0, 40)) + b"\n" for _ in range(int(rng.integers(1, 60))))
              + (b"tail" if k % 2 else b"") for k in range(6)]
    monkeypatch.setattr(schema, "open", lambda p, mode: _SmallReads(p), raising=False)  # 5-byte blocks
    for k, raw in enumerate(cases):
        path = tmp_path / f"{k}.jsonl"
        path.write_bytes(raw)
        lines = raw.split(b"\n")
        lines = [ln + b"\n" for ln in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        want, start = [], 0
        for i in range(0, len(lines), per_range):
            chunk = lines[i:i + per_range]
            want.append((start, start + sum(map(len, chunk)), i + 1, len(chunk)))
            start += sum(map(len, chunk))
        assert schema.line_ranges(path, per_range) == want, raw


class _SmallReads:
    """A file whose read(n) returns at most 5 bytes: lines and newlines straddle block ends."""

    def __init__(self, path):
        self.f = open(path, "rb")

    def read(self, n=-1):
        return self.f.read(min(n, 5) if n and n > 0 else 5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
