"""Tiny fixtures: deterministic bytes, the intended architecture, the cache, model specs, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunekit.errors import UserError
from tunekit.model import fixtures, resolve_model, tiny_model_dir


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_builds_give_identical_bytes(tmp_path):
    fixtures.build_tiny(tmp_path / "a")
    fixtures.build_tiny(tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) == {"config.json", "generation_config.json", "model.safetensors", *fixtures.TOKENIZER_FILES}
    for name in a:
        assert a[name] == b[name], f"{name} differs between two builds"
    # ...and the seed matters (the test above would pass for a builder that ignores it).
    fixtures.build_tiny_model(tmp_path / "c", tmp_path / "a", seed=1)
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != a["model.safetensors"]


def test_tiny_model_architecture():
    import torch
    from transformers import AutoModelForCausalLM

    d = tiny_model_dir()
    model = AutoModelForCausalLM.from_pretrained(d)
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)          # GQA
    assert cfg.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert cfg.hidden_act == "silu" and cfg.hidden_size <= 64 and cfg.num_hidden_layers == 2
    assert type(model.model.norm).__name__ == "LlamaRMSNorm"
    assert cfg.max_position_embeddings >= 512
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 4)
    assert model.generation_config.eos_token_id == 2
    n = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n <= 1_000_000, n
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (d / "model.safetensors").is_file() and not list(d.glob("*.bin"))
    # The vocabulary covers every tokenizer id and a forward pass works.
    tok = json.loads((d / "tokenizer.json").read_text())
    assert cfg.vocab_size == len(tok["model"]["vocab"])
    out = model(torch.tensor([[1, 5, 6, 7]]))
    assert out.logits.shape == (1, 4, cfg.vocab_size) and torch.isfinite(out.logits).all()


def test_tiny_tokenizer_layout_mirrors_llmjp():
    from tunekit.model import sp_convert

    proto = sp_convert.load_proto((fixtures.tiny_tokenizer_dir() / "tokenizer.model").read_bytes())
    t, n = proto.trainer_spec, proto.normalizer_spec
    assert [p.piece for p in proto.pieces[:5]] == ["<unk>", "<s>", "</s>", "<mask>", "<pad>"]
    assert t.byte_fallback and t.split_digits and t.allow_whitespace_only_pieces
    assert n.name == "identity" and n.add_dummy_prefix and not n.remove_extra_whitespaces
    assert 300 <= len(proto.pieces) <= 2048


def test_cache_key_follows_the_sample_contents_not_their_paths(tmp_path):
    files = fixtures.sample_files()
    key = fixtures._tiny_tokenizer_key(files)
    same, edited = tmp_path / "same.jsonl", tmp_path / "edited.jsonl"
    same.write_bytes(files[0].read_bytes())
    edited.write_bytes(files[0].read_bytes() + b"\n")
    assert fixtures._tiny_tokenizer_key([same] + files[1:]) == key
    assert fixtures._tiny_tokenizer_key([edited] + files[1:]) != key


def test_tiny_tokenizer_builds_when_the_root_is_moved(tmp_path, monkeypatch):
    """Tests that relocate TUNEKIT_ROOT still get the fixture (from this checkout's sample data)."""
    monkeypatch.setenv("TUNEKIT_ROOT", str(tmp_path))
    monkeypatch.delenv("TUNEKIT_CACHE_DIR", raising=False)
    d = fixtures.tiny_tokenizer_dir()
    assert d.parent == tmp_path / ".cache" / "tunekit" / "fixtures"
    monkeypatch.delenv("TUNEKIT_ROOT")
    assert d.name == fixtures.tiny_tokenizer_dir().name


def test_cached_build_happens_once_across_processes(tmp_path):
    """Three processes ask for the same fixture at once: one builds, all get the same folder."""
    log = tmp_path / "builds.log"
    code = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from tunekit.model import fixtures
        def build(out):
            with open({str(log)!r}, "a") as f:
                f.write(str(os.getpid()) + "\\n")
            time.sleep(1.0)
            (out / "x").write_text("done")
        print(fixtures._cached("probe", {{"k": 1}}, build))
    """)
    env = {**__import__("os").environ, "TUNEKIT_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    outs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1 and len(log.read_text().splitlines()) == 1
    built = Path(outs.pop())
    assert (built / "x").read_text() == "done" and (built / "fixture_key.json").is_file()
    assert not list(built.parent.glob("*.tmp-*"))


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_CACHE_DIR", str(tmp_path))

    def boom(out):
        (out / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        fixtures._cached("probe", {"k": 2}, boom)
    assert [p.name for p in (tmp_path / "fixtures").iterdir() if not p.name.endswith(".lock")] == []


# ------------------------------------------------------------------ resolve_model

def test_resolve_tiny():
    assert resolve_model("tiny") == tiny_model_dir()


def test_resolve_hf_dir_run_dir_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEKIT_ROOT", str(tmp_path))
    hf = tmp_path / "models" / "m"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    run = tmp_path / "runs" / "sft" / "r1"
    (run / "hf_model").mkdir(parents=True)
    (run / "params.json").write_text("{}")
    (run / "hf_model" / "config.json").write_text("{}")
    assert resolve_model(hf) == hf
    assert resolve_model("models/m") == hf                      # relative to the repo root
    assert resolve_model(str(run)) == run / "hf_model"
    assert resolve_model("runs/sft/r1") == run / "hf_model"


@pytest.mark.parametrize("setup,spec,message", [
    ("run_without_model", "runs/sft/r2", "has not published a model yet"),
    (None, "no/such/dir", "does not exist"),
    (None, "llm-jp/llm-jp-4-8b", "never downloaded"),
    ("plain_dir", "plain", "neither an HF model directory nor a run directory"),
    (None, "", "empty"),
])
def test_resolve_errors_say_what_was_expected(tmp_path, monkeypatch, setup, spec, message):
    monkeypatch.setenv("TUNEKIT_ROOT", str(tmp_path))
    if setup == "run_without_model":
        (tmp_path / "runs" / "sft" / "r2").mkdir(parents=True)
        (tmp_path / "runs" / "sft" / "r2" / "params.json").write_text("{}")
    if setup == "plain_dir":
        (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match=message):
        resolve_model(spec)


# ------------------------------------------------------------------ CLI

def test_cli_tiny_writes_a_loadable_model_and_refuses_to_overwrite(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.cli import main

    out = tmp_path / "tiny"
    assert main(["fixtures", "tiny", str(out)]) == 0
    assert _files(out) == {k: v for k, v in _files(tiny_model_dir()).items() if k != "fixture_key.json"}
    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).eos_token_id == 2
    assert main(["fixtures", "tiny", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_llmjp_tokenizer_errors_cleanly(tmp_path, capsys):
    from tunekit.cli import main

    assert main(["fixtures", "llmjp-tokenizer", str(tmp_path / "missing.model"), str(tmp_path / "o")]) == 2
    assert "SentencePiece model not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
