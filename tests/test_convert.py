"""HF <-> NeMo conversion on the tiny fixture: layout, both directions, round trip, logit parity,
format compatibility with Megatron-core's own writer, inputs as users have them, and every kind of
damaged input giving one clear error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tunekit.convert import api, layout, safetensors_io as st, sources, torch_dist, verify
from tunekit.convert.hf_files import HFWeights, copy_tokenizer_files
from tunekit.convert.layout import LlamaSpec
from tunekit.convert.megatron_cpu import megatron_on_cpu
from tunekit.errors import UserError

torch.set_num_threads(1)
QUIET = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def tiny() -> Path:
    from tunekit.model import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="module")
def nemo_dir(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conv") / "nemo"
    api.hf_to_nemo(str(tiny), out, **QUIET)
    return out


def _hf_tensors(d: Path) -> dict[str, torch.Tensor]:
    w = HFWeights(d)
    return {k: w.get(k) for k in w.entries}


def _spec_of(hf_dir: Path) -> LlamaSpec:
    from tunekit.convert.configs import read_json, spec_from_hf_config

    return spec_from_hf_config(read_json(hf_dir / "config.json"), "config.json")


# ---------------------------------------------------------------- layout
def test_qkv_is_grouped_per_kv_head():
    spec = LlamaSpec(num_layers=1, hidden_size=1, ffn_hidden_size=1, num_heads=4, num_query_groups=2,
                     head_dim=1, vocab_size=1)
    q = torch.tensor([[0.], [1.], [2.], [3.]])
    k = torch.tensor([[10.], [11.]])
    v = torch.tensor([[20.], [21.]])
    fused = layout.fuse_qkv(spec, q, k, v)
    # group 0: its query heads 0, 1, then its key, then its value; then group 1.
    assert fused.flatten().tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    q2, k2, v2 = layout.split_qkv(spec, fused)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_fc1_is_gate_then_up_and_keys_are_official():
    spec = LlamaSpec(2, 8, 12, 2, 1, 4, 10)
    fc1 = next(r for r in layout.RULES if r.nemo.endswith("linear_fc1.weight"))
    gate, up = torch.zeros(12, 8), torch.ones(12, 8)
    assert torch.equal(fc1.to_nemo(spec, [gate, up])[:12], gate)
    assert set(layout.nemo_expected(spec)) == {
        "model.embedding.word_embeddings.weight",
        "model.decoder.layers.self_attention.linear_qkv.layer_norm_weight",
        "model.decoder.layers.self_attention.linear_qkv.weight",
        "model.decoder.layers.self_attention.linear_proj.weight",
        "model.decoder.layers.mlp.linear_fc1.layer_norm_weight",
        "model.decoder.layers.mlp.linear_fc1.weight",
        "model.decoder.layers.mlp.linear_fc2.weight",
        "model.decoder.final_layernorm.weight",
        "model.output_layer.weight",
    }
    assert layout.nemo_expected(spec)["model.decoder.layers.mlp.linear_fc1.weight"] == (2, 24, 8)


# ---------------------------------------------------------------- safetensors streaming
def test_shard_writer_output_loads_with_safetensors(tmp_path):
    from safetensors import safe_open

    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5), "c": torch.randn(2, 2)}
    w = st.ShardWriter(tmp_path, [(k, tuple(v.shape)) for k, v in tensors.items()], torch.bfloat16,
                       max_shard_bytes=30)
    for k, v in tensors.items():
        w.write(k, v)
    w.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(w.files) > 1
    for name, fname in index["weight_map"].items():
        with safe_open(str(tmp_path / fname), "pt") as f:
            assert torch.equal(f.get_tensor(name), tensors[name].to(torch.bfloat16))


def test_truncated_safetensors_is_named(tmp_path):
    t = {"x": torch.randn(64, 64)}
    w = st.ShardWriter(tmp_path, [("x", (64, 64))], torch.float32, 10**9)
    w.write("x", t["x"])
    w.close()
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"model\.safetensors: truncated"):
        st.read_header(path)


# ---------------------------------------------------------------- HF -> NeMo
def test_hf_to_nemo_layout_and_verification(nemo_dir, tiny):
    assert (nemo_dir / "model_config.yaml").is_file()
    assert sorted(p.name for p in (nemo_dir / "model_weights").iterdir()) == \
        [".metadata", "__0_0.distcp", "common.pt", "metadata.json"]
    assert (nemo_dir / "tokenizer" / "tokenizer.json").is_file()
    summary = json.loads((nemo_dir / api.RECORD).read_text())
    v = summary["verification"]
    assert v["weights_bit_exact"] and v["tensors_compared"] == len(_hf_tensors(tiny))
    assert v["logits_match"] and v["logits_max_abs_diff"] < 1e-5 and v["argmax_agreement"] == 1.0
    assert v["prompts"] == len(verify.PROMPTS)
    assert not list(nemo_dir.parent.glob("nemo.tmp-*")), "temp folder left behind"


def test_written_checkpoint_matches_megatrons_own_writer(nemo_dir, tiny, tmp_path):
    """Same keys, global shapes, chunks and dtypes as Megatron-core's dist_checkpointing.save of a
    GPTModel holding the same weights (ours adds the TE-spec core_attention._extra_state)."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint import FileSystemReader

    spec = _spec_of(tiny)
    with megatron_on_cpu():
        model = verify.load_gpt(spec, nemo_dir / "model_weights")
        ref_dir = tmp_path / "megatron_saved"
        ref_dir.mkdir()
        dist_checkpointing.save(model.sharded_state_dict(prefix="model."), str(ref_dir))
    ours = FileSystemReader(str(nemo_dir / "model_weights")).read_metadata().state_dict_metadata
    ref = FileSystemReader(str(ref_dir)).read_metadata().state_dict_metadata
    extra = set(ours) - set(ref)
    assert extra == {f"model.decoder.layers.self_attention.core_attention._extra_state/shard_{i}_2"
                     for i in range(2)}
    assert set(ref) <= set(ours)
    for key, meta in ref.items():
        if hasattr(meta, "chunks"):
            mine = ours[key]
            assert mine.size == meta.size and mine.properties.dtype == meta.properties.dtype, key
            chunks = lambda m: sorted((tuple(c.offsets), tuple(c.sizes)) for c in m.chunks)  # noqa: E731
            assert chunks(mine) == chunks(meta), key
    # And Megatron's own file reads back to the same weights through our reader.
    hf = HFWeights(tiny)
    with megatron_on_cpu():
        assert verify.compare_weights(torch_dist.NemoWeights(ref_dir), hf, spec, torch.float32) == 21


# ---------------------------------------------------------------- NeMo -> HF, round trip
def test_round_trip_is_bit_exact(nemo_dir, tiny, tmp_path):
    out = tmp_path / "hf"
    result = api.nemo_to_hf(str(nemo_dir), out, **QUIET)
    src, back = _hf_tensors(tiny), _hf_tensors(out)
    assert src.keys() == back.keys()
    for k in src:
        assert src[k].dtype == back[k].dtype and torch.equal(src[k], back[k]), k
    cfg_src = json.loads((tiny / "config.json").read_text())
    cfg_out = json.loads((out / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert cfg_out[key] == cfg_src[key], key
    assert cfg_out["rope_theta"] == cfg_out["rope_parameters"]["rope_theta"] == 10000.0
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    v = result.summary["verification"]
    assert v["logits_max_abs_diff"] < 1e-5
    # The kit's own NeMo output is stored one whole chunk per tensor: every tensor mapped, none loaded.
    assert v["tensors_mapped"] == len(layout.GLOBAL_RULES) + len(layout.LAYER_RULES) * 2


def test_every_item_of_a_written_checkpoint_is_located_in_place(nemo_dir):
    """The checksum re-read and NeMo -> HF find each tensor's raw bytes inside its torch.save archive
    without unpickling; they equal what torch.load gives. A tensor that is not its whole storage,
    contiguous, of the expected shape and dtype, is not located (the callers then load it)."""
    import io
    import zipfile

    from tunekit.convert import distcp

    wd = nemo_dir / "model_weights"
    md = torch_dist.read_metadata(wd)
    raw = memoryview((wd / "__0_0.distcp").read_bytes())
    n = 0
    for index, info in md.storage_data.items():
        meta = md.state_dict_metadata[index.fqn]
        if not hasattr(meta, "chunks"):
            continue
        sizes = next(tuple(c.sizes) for c in meta.chunks if tuple(c.offsets) == tuple(index.offset))
        where = distcp.locate(raw, info.offset, info.length, meta.properties.dtype, sizes)
        ref = torch.load(io.BytesIO(raw[info.offset:info.offset + info.length]), weights_only=True)
        assert where is not None and bytes(raw[where.start:where.start + where.nbytes]) == \
            ref.contiguous().view(torch.uint8).numpy().tobytes(), index.fqn
        # A valid zip archive too: the CRC-32 of the bytes filled in after torch wrote the archive.
        assert zipfile.ZipFile(io.BytesIO(raw[info.offset:info.offset + info.length])).testzip() is None
        n += 1
    assert n == len(md.storage_data) - 10   # all but the 10 _extra_state objects
    for t, shape in [(torch.ones(4, 3).t(), (3, 4)), (torch.ones(8)[2:6], (4,)), (torch.ones(4), (2, 2))]:
        buf = io.BytesIO()
        torch.save(t, buf)
        assert distcp.locate(buf.getbuffer(), 0, len(buf.getvalue()), torch.float32, shape) is None


def test_hf_output_carries_the_kit_chat_template(nemo_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.template import chat_template_for

    out = tmp_path / "hf"
    api.nemo_to_hf(str(nemo_dir), out, verify_logits=False, **QUIET)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template == chat_template_for(tok)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "1+1は?"}], add_generation_prompt=True,
                                     tokenize=False)
    assert prompt.endswith("\n\n### 応答:\n") and "### 指示:\n1+1は?" in prompt
    assert AutoModelForCausalLM.from_pretrained(str(out)).config.num_hidden_layers == 2


def test_bf16_output_both_ways(tiny, tmp_path):
    nemo = tmp_path / "nemo16"
    api.hf_to_nemo(str(tiny), nemo, dtype="bf16", **QUIET)
    with megatron_on_cpu():
        assert torch_dist.NemoWeights(nemo / "model_weights").dtype == torch.bfloat16
    hf = tmp_path / "hf16"
    res = api.nemo_to_hf(str(nemo), hf, **QUIET)  # auto keeps bf16
    assert res.summary["dtype"] == "bf16"
    src, back = _hf_tensors(tiny), _hf_tensors(hf)
    for k in src:
        assert back[k].dtype == torch.bfloat16 and torch.equal(back[k], src[k].to(torch.bfloat16)), k
    hf32 = tmp_path / "hf32"
    api.nemo_to_hf(str(nemo), hf32, dtype="fp32", verify_logits=False, **QUIET)
    assert all(torch.equal(t, back[k].float()) for k, t in _hf_tensors(hf32).items())


def test_sharded_hf_output(nemo_dir, tmp_path):
    out = tmp_path / "hf"
    res = api.nemo_to_hf(str(nemo_dir), out, max_shard_gb=0.0002, verify_logits=False, **QUIET)
    assert res.summary["shards"] > 1 and (out / "model.safetensors.index.json").is_file()
    assert res.summary["verification"]["weights_bit_exact"]


# ---------------------------------------------------------------- verification is not vacuous
def test_logits_windows_fit_the_memory_budget():
    """llm-jp-4-8b's fp32 copy (32 GB) does not fit 16 GB: windows of a few layers, every layer
    covered once; a small model is checked whole."""
    big = LlamaSpec(num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_heads=32, num_query_groups=8,
                    head_dim=128, vocab_size=196608)
    windows = verify.logits_windows(big, 16.0)
    assert 1 < len(windows) < 32 and windows[0][0] == 0 and windows[-1][1] == 32
    assert all(a == b for (_, a), (b, _) in zip(windows, windows[1:]))
    per = windows[0][1] - windows[0][0]
    fixed, layer = 16 * verify.VOCAB_SAMPLE * 4096, 4 * (big.num_params() - 2 * 196608 * 4096 - 4096) / 32
    assert 1.3 * (fixed + per * layer) <= 16 * 2**30 < 1.3 * (fixed + (per + 1) * layer)
    assert verify.logits_windows(big, 64.0) == [(0, 32)]
    assert verify.logits_windows(big, 1.0) == [(i, i + 1) for i in range(32)]


def test_the_vocabulary_sample_holds_the_prompts_and_spreads_over_the_rest():
    ids = [[5, 196600, 77], [77, 3]]
    vocab = verify.vocab_sample(ids, 196608, limit=1000)
    assert len(vocab) <= 1000 and {3, 5, 77, 196600} <= set(vocab) and vocab == sorted(vocab)
    assert vocab[-1] > 190000 and len([v for v in vocab if v < 98304]) > 400
    assert verify.vocab_sample(ids, 300, limit=1000) == list(range(300))


def test_windowed_logits_check_passes_and_records_its_windows(tiny, tmp_path):
    res = api.hf_to_nemo(str(tiny), tmp_path / "nemo", logits_memory_gb=1e-6, logits_layers="full", **QUIET)
    v = res.summary["verification"]
    assert v["layer_windows"] == [[0, 1], [1, 2]] and v["logits_match"] and v["logits_max_abs_diff"] < 1e-5
    assert v["logits_layers"] == "full"
    back = api.nemo_to_hf(str(tmp_path / "nemo"), tmp_path / "hf", logits_memory_gb=1e-6, logits_layers="full",
                          **QUIET)
    assert back.summary["verification"]["layer_windows"] == [[0, 1], [1, 2]]


def test_the_default_logits_check_is_first_middle_and_last_layer():
    spec = LlamaSpec(num_layers=32, hidden_size=8, ffn_hidden_size=8, num_heads=2, num_query_groups=1,
                     head_dim=4, vocab_size=16)
    assert verify.slice_windows(spec) == [(0, 1), (16, 17), (31, 32)]
    assert verify.slice_windows(LlamaSpec(1, 8, 8, 2, 1, 4, 16)) == [(0, 1)]


LOGITS_MODES = [dict(logits_layers="slice"), dict(logits_layers="full", logits_memory_gb=16.0),
                dict(logits_layers="full", logits_memory_gb=1e-6)]
LOGITS_IDS = ["slice (default)", "full, whole model", "full, one layer at a time"]


@pytest.mark.parametrize("mode", LOGITS_MODES, ids=LOGITS_IDS)
def test_logits_check_catches_a_consistently_wrong_layout(tiny, tmp_path, monkeypatch, mode):
    """A wrong QKV layout that round-trips (fuse and split agree) passes the weight check; only the
    Megatron-core logits can catch it, and then no output folder may appear."""
    def plain_fuse(spec, q, k, v):
        return torch.cat([q, k, v])

    def plain_split(spec, w):
        n, g = spec.num_heads * spec.head_dim, spec.num_query_groups * spec.head_dim
        return w[:n].contiguous(), w[n:n + g].contiguous(), w[n + g:].contiguous()

    monkeypatch.setattr(layout, "fuse_qkv", plain_fuse)
    monkeypatch.setattr(layout, "split_qkv", plain_split)
    out = tmp_path / "bad"
    with pytest.raises(verify.VerificationError, match="logits differ"):
        api.hf_to_nemo(str(tiny), out, **mode, **QUIET)
    assert not out.exists() and not list(tmp_path.glob("bad.tmp-*"))


@pytest.mark.parametrize("mode", LOGITS_MODES[:2], ids=LOGITS_IDS[:2])
def test_logits_check_catches_gate_and_up_swapped(tiny, tmp_path, monkeypatch, mode):
    """fc1 written as up rows, then gate rows: every byte round-trips (the swap is consistent), so
    only the logits see that Megatron's SwiGLU would multiply the wrong halves."""
    real = layout.Rule.hf_names

    def swapped(self, layer):
        names = real(self, layer)
        return names[::-1] if self.join == "rows" else names

    monkeypatch.setattr(layout.Rule, "hf_names", swapped)
    with pytest.raises(verify.VerificationError, match="logits differ"):
        api.hf_to_nemo(str(tiny), tmp_path / "bad", **mode, **QUIET)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("mode", LOGITS_MODES[:2], ids=LOGITS_IDS[:2])
def test_logits_check_catches_a_wrong_rope_theta_in_the_written_config(tiny, nemo_dir, tmp_path, monkeypatch,
                                                                      mode):
    """Megatron-core is built from the model_config.yaml as written (hf-to-nemo), transformers from
    the config.json as written (nemo-to-hf): a wrong rotary base in either is caught."""
    from tunekit.convert import configs

    real_nemo, real_hf = configs.nemo_config_dict, configs.hf_config_dict
    monkeypatch.setattr(configs, "nemo_config_dict", lambda *a, **k: {**real_nemo(*a, **k), "rotary_base": 10.0})
    with pytest.raises(verify.VerificationError, match="logits differ"):
        api.hf_to_nemo(str(tiny), tmp_path / "bad", **mode, **QUIET)
    monkeypatch.setattr(configs, "nemo_config_dict", real_nemo)

    def wrong_theta(*a, **k):
        cfg = real_hf(*a, **k)
        cfg["rope_theta"] = 10.0
        cfg["rope_parameters"] = {**cfg["rope_parameters"], "rope_theta": 10.0}
        return cfg

    monkeypatch.setattr(configs, "hf_config_dict", wrong_theta)
    with pytest.raises(verify.VerificationError, match="logits differ"):
        api.nemo_to_hf(str(nemo_dir), tmp_path / "bad_hf", **mode, **QUIET)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad_hf").exists()


def _flip_middle(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_byte_changed_on_disk_after_writing_stops_hf_to_nemo(tiny, tmp_path, monkeypatch):
    """The written bytes are read back once against checksums taken while writing (no second load
    of the model): a disk or filesystem fault between the two is caught, nothing is published."""
    real = api.write_weights

    def faulty(weights_dir, *a, **k):
        sums = real(weights_dir, *a, **k)
        _flip_middle(weights_dir / "__0_0.distcp")
        return sums

    monkeypatch.setattr(api, "write_weights", faulty)
    out = tmp_path / "nemo"
    bad = r"__0_0\.distcp.*(reads back different bytes|cannot be read back)"
    with pytest.raises(verify.VerificationError, match=bad):
        api.hf_to_nemo(str(tiny), out, verify_logits=False, **QUIET)
    assert not out.exists() and not list(tmp_path.glob("nemo.tmp-*"))


def test_a_byte_changed_on_disk_after_writing_stops_nemo_to_hf(nemo_dir, tmp_path, monkeypatch):
    real = st.ShardWriter.close

    def faulty(self):
        real(self)
        _flip_middle(self.out_dir / self.files[0])

    monkeypatch.setattr(st.ShardWriter, "close", faulty)
    out = tmp_path / "hf"
    with pytest.raises(verify.VerificationError, match=r"model\.safetensors reads back different bytes"):
        api.nemo_to_hf(str(nemo_dir), out, verify_logits=False, **QUIET)
    assert not out.exists()


def test_a_mapping_that_does_not_invert_stops_before_writing(tiny, tmp_path, monkeypatch):
    """A split that is not the inverse of the fuse is caught in memory, tensor by tensor."""
    real = layout.split_qkv
    monkeypatch.setattr(layout, "split_qkv", lambda spec, w: tuple(t.flip(0) for t in real(spec, w)))
    with pytest.raises(verify.VerificationError, match=r"q_proj\.weight does not come back from .*linear_qkv"):
        api.hf_to_nemo(str(tiny), tmp_path / "nemo", verify_logits=False, **QUIET)


# ---------------------------------------------------------------- damaged inputs: one clear error each
def _copy_hf(tiny: Path, dst: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"),
    (lambda t: t.__setitem__("model.norm.weight", torch.ones(63)), r"'model\.norm\.weight' has shape \[63\]"),
    (lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias", torch.ones(64)),
     r"unknown tensor 'model\.layers\.0\.self_attn\.q_proj\.bias'"),
], ids=["missing", "shape", "unknown"])
def test_damaged_hf_input(tiny, tmp_path, edit, message):
    src = _copy_hf(tiny, tmp_path / "src", edit)
    with pytest.raises(UserError, match=message):
        api.hf_to_nemo(str(src), tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()


def test_truncated_hf_input(tiny, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny, src)
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(UserError, match="truncated"):
        api.hf_to_nemo(str(src), tmp_path / "out", **QUIET)


def _nemo_copy(nemo_dir: Path, dst: Path) -> Path:
    shutil.copytree(nemo_dir, dst, symlinks=True)
    return dst


def test_truncated_nemo_data_file(nemo_dir, tmp_path):
    src = _nemo_copy(nemo_dir, tmp_path / "src")
    f = src / "model_weights" / "__0_0.distcp"
    f.write_bytes(f.read_bytes()[:-5000])
    with pytest.raises(UserError, match=r"__0_0\.distcp: truncated"):
        api.nemo_to_hf(str(src), tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()


def test_truncated_nemo_metadata(nemo_dir, tmp_path):
    src = _nemo_copy(nemo_dir, tmp_path / "src")
    f = src / "model_weights" / ".metadata"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(UserError, match=r"\.metadata: cannot read"):
        api.nemo_to_hf(str(src), tmp_path / "out", **QUIET)


def test_nemo_config_and_weights_disagree(nemo_dir, tmp_path):
    src = _nemo_copy(nemo_dir, tmp_path / "src")
    cfg = src / "model_config.yaml"
    cfg.write_text(cfg.read_text().replace("ffn_hidden_size: 256", "ffn_hidden_size: 128"))
    with pytest.raises(UserError, match=r"'model\.decoder\.layers\.mlp\.linear_fc1\.weight' has shape"):
        api.nemo_to_hf(str(src), tmp_path / "out", **QUIET)


def _write_nemo_variant(tiny: Path, dst: Path, drop: str = "", extra: str = "") -> Path:
    """A NeMo dir whose weights lack key `drop` or carry an extra tensor `extra`."""
    spec = _spec_of(tiny)
    hf = HFWeights(tiny)

    def fetch(rule, layer, part):
        names = rule.hf_names(layer)
        return hf.get(names[part]) if part is not None else rule.to_nemo(spec, [hf.get(n) for n in names])

    chunks = [c for c in torch_dist.plan_chunks(spec, fetch) if c.fqn != drop]
    if extra:
        chunks.append(torch_dist.Chunk(extra, (3,), (0,), (3,), lambda: torch.zeros(3), False))
    copy_tokenizer_files(tiny, dst / "tokenizer")
    _nemo_cfg(spec, dst)
    torch_dist.write_weights(dst / "model_weights", spec, chunks, torch.float32)
    return dst


def _nemo_cfg(spec: LlamaSpec, dst: Path) -> None:
    import yaml

    from tunekit.convert.configs import nemo_config_dict

    (dst / "model_config.yaml").write_text(yaml.safe_dump(nemo_config_dict(spec, "fp32", None)))


def test_nemo_missing_and_unknown_keys(tiny, tmp_path):
    missing = _write_nemo_variant(tiny, tmp_path / "missing", drop="model.output_layer.weight")
    with pytest.raises(UserError, match=r"'model\.output_layer\.weight' is missing"):
        api.nemo_to_hf(str(missing), tmp_path / "out1", **QUIET)
    unknown = _write_nemo_variant(tiny, tmp_path / "unknown", extra="model.decoder.layers.lora_a.weight")
    with pytest.raises(UserError, match=r"unknown key 'model\.decoder\.layers\.lora_a\.weight'"):
        api.nemo_to_hf(str(unknown), tmp_path / "out2", **QUIET)
    # Optimizer state in a training checkpoint is not a weight: skipped, and counted.
    trainer = _write_nemo_variant(tiny, tmp_path / "trainer", extra="optimizer.state.exp_avg.model.x")
    res = api.nemo_to_hf(str(trainer), tmp_path / "out3", verify_logits=False, **QUIET)
    assert res.summary["skipped_entries"] == {"extra_state": 10, "optimizer": 1, "rng_state": 0}


def test_unsupported_hf_config_is_named(tiny, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"rope type='yarn' is not supported"):
        api.hf_to_nemo(str(src), tmp_path / "out", **QUIET)


# ---------------------------------------------------------------- outputs: atomic, disk space, overwrite
def test_existing_destination_and_disk_space(nemo_dir, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="already exists"):
        api.nemo_to_hf(str(nemo_dir), nemo_dir.parent, **QUIET)
    with pytest.raises(UserError, match="contains the source"):  # overwrite must not delete it
        api.nemo_to_hf(str(nemo_dir), nemo_dir, overwrite=True, **QUIET)
    assert (nemo_dir / "model_weights" / ".metadata").is_file()
    import collections

    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(api.shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1000))
    with pytest.raises(UserError, match="not enough disk space"):
        api.nemo_to_hf(str(nemo_dir), tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- inputs as users have them
def _training_output(nemo_dir: Path, root: Path, names: list[str]) -> Path:
    """The official kit's SFT output: model_config.yaml next to step=* checkpoint folders."""
    (root / "checkpoints").mkdir(parents=True)
    shutil.copy(nemo_dir / "model_config.yaml", root / "model_config.yaml")
    shutil.copytree(nemo_dir / "tokenizer", root / "tokenizer")
    for name in names:
        shutil.copytree(nemo_dir / "model_weights", root / "checkpoints" / name)
    return root


def test_training_output_picks_last_best_or_named(nemo_dir, tmp_path):
    names = ["step=100-val_loss=1.500", "step=200-val_loss=1.200", "step=300-val_loss=1.300-last"]
    root = _training_output(nemo_dir, tmp_path / "sft_out", names)
    last = sources.resolve_nemo_source(str(root), "last")
    assert last.weights_dir.name == names[2] and "-last" in last.note
    best = sources.resolve_nemo_source(str(root), "best")
    assert best.weights_dir.name == names[1] and "lowest loss 1.2" in best.note
    named = sources.resolve_nemo_source(str(root), names[0])
    assert named.weights_dir.name == names[0]
    with pytest.raises(UserError, match="no checkpoint named 'step=9'"):
        sources.resolve_nemo_source(str(root), "step=9")
    # The step folder itself works too (config taken from above it).
    assert sources.resolve_nemo_source(str(root / "checkpoints" / names[0])).config_path == \
        root / "model_config.yaml"


def test_training_output_converts_with_relative_paths(nemo_dir, tmp_path, monkeypatch, tiny):
    _training_output(nemo_dir, tmp_path / "sft_out", ["step=10", "step=20-last"])
    monkeypatch.chdir(tmp_path)
    res = api.nemo_to_hf("sft_out", "hf_out", verify_logits=False, **QUIET)
    assert res.output == tmp_path / "hf_out" and res.summary["checkpoint"] == "step=20-last"
    src, out = _hf_tensors(tiny), _hf_tensors(tmp_path / "hf_out")
    assert src.keys() == out.keys() and all(torch.equal(src[k], out[k]) for k in src)


def test_best_without_losses_and_packed_nemo_are_explained(nemo_dir, tmp_path):
    root = _training_output(nemo_dir, tmp_path / "out", ["step=10", "step=20-last"])
    with pytest.raises(UserError, match="cannot tell which checkpoint is best"):
        sources.resolve_nemo_source(str(root), "best")
    packed = tmp_path / "model.nemo"
    packed.write_bytes(b"x")
    with pytest.raises(UserError, match="tar -xf"):
        sources.resolve_nemo_source(str(packed))


def test_run_dirs_as_inputs(nemo_dir, tmp_path):
    run = tmp_path / "runs" / "convert_hf_to_nemo" / "r1"
    run.mkdir(parents=True)
    (run / "params.json").write_text("{}")
    shutil.copytree(nemo_dir, run / "nemo")
    src = sources.resolve_nemo_source(str(run))
    assert src.root == run / "nemo"
    api.nemo_to_hf(str(run), tmp_path / "runs" / "x" / "hf_model", verify_logits=False, **QUIET)
    hf_run = tmp_path / "runs" / "x"
    (hf_run / "params.json").write_text("{}")
    res = api.hf_to_nemo(str(hf_run), tmp_path / "nemo2", verify_logits=False, **QUIET)
    assert res.summary["source"] == str(hf_run / "hf_model")


def test_tokenizer_must_come_from_somewhere(nemo_dir, tmp_path, tiny):
    import yaml

    src = _nemo_copy(nemo_dir, tmp_path / "src")
    shutil.rmtree(src / "tokenizer")
    # model_config.yaml also names the tokenizer folder it was written with (the original's).
    cfg = yaml.safe_load((src / "model_config.yaml").read_text())
    assert cfg["tokenizer"]["type"] == str(nemo_dir / "tokenizer")
    cfg["tokenizer"]["type"] = None
    (src / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="no tokenizer stored"):
        api.nemo_to_hf(str(src), tmp_path / "out", **QUIET)
    res = api.nemo_to_hf(str(src), tmp_path / "out", tokenizer=str(tiny), verify_logits=False, **QUIET)
    assert res.summary["tokenizer_from"] == str(tiny)


# ---------------------------------------------------------------- CLI
def test_cli_both_directions_and_error_exit(tmp_path, monkeypatch, capsys):
    from tunekit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["convert", "hf-to-nemo", "tiny", "n", "--no-verify-logits"]) == 0
    assert main(["convert", "nemo-to-hf", "n", "h", "--dtype", "bf16"]) == 0
    assert json.loads((tmp_path / "h" / api.RECORD).read_text())["dtype"] == "bf16"
    assert main(["convert", "nemo-to-hf", "n", "h"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_prompts_batched_right_padded_give_each_prompts_own_logits(tiny, nemo_dir):
    """The logits check runs its prompts (of different lengths) as one right-padded batch per model:
    under the causal mask each prompt must get exactly the logits of running it alone, in both
    transformers and Megatron-core, or the check would compare padding effects."""
    from tunekit.convert.configs import read_json
    from tunekit.convert.torch_dist import NemoWeights

    spec = _spec_of(tiny)
    ids = [[5, 9, 2, 7, 11, 3, 8], [4, 6], [12, 1, 10, 13]]
    vocab = verify.vocab_sample(ids, spec.vocab_size)
    hf, cfg = HFWeights(tiny), read_json(tiny / "config.json")
    hf_g = verify.hf_globals(hf, spec, torch.float32, vocab)
    window = (0, spec.num_layers)
    together = verify.hf_window_logits(hf, cfg, window, ids, torch.float32, vocab, hf_g)
    alone = [verify.hf_window_logits(hf, cfg, window, [x], torch.float32, vocab, hf_g)[0] for x in ids]
    assert [t.shape[0] for t in together] == [len(x) for x in ids]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with megatron_on_cpu():
        nemo = NemoWeights(nemo_dir / "model_weights")
        m_g = verify.megatron_globals(nemo, spec, torch.float32, vocab)
        m_together = verify.megatron_window_logits(nemo, spec, window, ids, torch.float32, vocab, m_g)
        m_alone = [verify.megatron_window_logits(nemo, spec, window, [x], torch.float32, vocab, m_g)[0]
                   for x in ids]
    for a, b, ref in zip(m_together, m_alone, alone):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, ref, rtol=1e-4, atol=1e-4)


def _resident_bytes(t: torch.Tensor) -> int:
    """Resident bytes of the mapping that holds `t` (from /proc/self/smaps)."""
    ptr, rss, inside = t.data_ptr(), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            a, b = (int(x, 16) for x in head.split("-"))
            inside = a <= ptr < b
        elif inside and line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
    return rss


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu node", "gpu node"])
def test_the_writer_frees_each_chunk_after_writing_it(tiny, tmp_path, monkeypatch, cuda):
    """torch's FileSystemWriter keeps every tensor it wrote referenced until the file is closed;
    the planner frees each chunk's bytes once the next is asked for, so the write holds one tensor,
    not the model. That is only safe while chunks are written strictly in turn: with CUDA present
    torch would copy ahead, so the writer turns that off; the bytes read back must still match."""
    spec = _spec_of(tiny)
    hf = HFWeights(tiny)
    made = []

    def fetch(rule, layer, part):
        names = rule.hf_names(layer)
        t = hf.get(names[part]) if part is not None else rule.to_nemo(spec, [hf.get(n) for n in names])
        made.append(t)
        return t

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    sums = torch_dist.write_weights(tmp_path / "w", spec, torch_dist.plan_chunks(spec, fetch), torch.float32)
    assert len(made) == len(sums) > 10
    # Every chunk freed: its own bytes (a fused qkv) released, or, for a view of the source file
    # (st.map_tensor: written straight from the page cache), its pages unmapped.
    assert any(st.is_mapped(t) for t in made) and any(not st.is_mapped(t) for t in made)
    for t in made:
        if st.is_mapped(t):
            assert _resident_bytes(t) <= 2 * 4096, "mapped pages of a written chunk still resident"
        else:
            assert t.untyped_storage().nbytes() == 0
    # Each chunk's bytes as handed over (checksummed before it was freed) are what was written.
    assert torch_dist.verify_written(tmp_path / "w", sums) == len(sums)


@pytest.mark.parametrize("direction", ["hf_to_nemo", "nemo_to_hf"])
def test_every_written_weight_file_is_synced_before_the_output_is_published(tiny, nemo_dir, tmp_path,
                                                                           monkeypatch, direction):
    """Weights are fsynced in a background thread while verification runs (not file by file while
    writing), and the conversion waits for it before renaming its temp folder into place."""
    import os as _os

    from tunekit.convert import durable

    out = tmp_path / "out"
    synced: list[tuple[str, bool]] = []
    real = _os.fsync

    def spy(fd):
        import threading

        if threading.current_thread().name == "tunekit-fsync":   # (atomic writes fsync too)
            synced.append((_os.readlink(f"/proc/self/fd/{fd}"), out.exists()))
        return real(fd)

    monkeypatch.setattr(durable.os, "fsync", spy)
    if direction == "hf_to_nemo":
        res = api.hf_to_nemo(str(tiny), out, verify_logits=False, **QUIET)
        weights = [p for p in (out / "model_weights").rglob("*") if p.is_file()]
    else:
        res = api.nemo_to_hf(str(nemo_dir), out, verify_logits=False, **QUIET)
        weights = list(out.glob("*.safetensors"))
    names = {Path(p).name for p, _ in synced}
    assert weights and {p.name for p in weights} <= names
    assert not any(published for _, published in synced)   # all before the rename
    assert res.summary["verification"]["files_synced"] == len(synced)


def test_a_failed_sync_stops_the_conversion(tiny, tmp_path, monkeypatch):
    from tunekit.convert import durable

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durable.os, "fsync", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="Input/output error"):
        api.hf_to_nemo(str(tiny), out, verify_logits=False, **QUIET)
    assert not out.exists()


def test_reading_a_row_set_reads_exactly_those_rows(tmp_path):
    """The logits check reads only the sampled vocabulary rows of the embedding and output layer
    (runs of consecutive rows in one read each): the same rows as slicing the whole tensor."""
    t = torch.arange(40 * 6, dtype=torch.float32).reshape(40, 6).to(torch.bfloat16)
    plan = [("a", (3,)), ("w", (40, 6))]
    writer = st.ShardWriter(tmp_path, plan, torch.bfloat16, 10**9)
    writer.write("a", torch.ones(3, dtype=torch.bfloat16))
    writer.write("w", t)
    writer.close()
    entry = st.read_header(tmp_path / "model.safetensors")["w"]
    for rows in ([0], [39], [0, 1, 2, 7, 8, 20, 38, 39], list(range(40)), [5, 9, 13]):
        assert torch.equal(st.read_row_set(entry, rows), t[rows])
    raw = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[:-20])   # the last rows are gone
    with pytest.raises(UserError, match="truncated"):
        st.read_row_set(entry, [39])


def _megatron_modules_after(call: str) -> str:
    """The first Megatron modules imported by a fresh interpreter that runs `api.<call>` ("[]": none)."""
    import subprocess
    import sys

    code = (f"import sys; from tunekit.convert import api; {call}; "
            "print(sorted(m for m in sys.modules if m.startswith('megatron'))[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_without_the_logits_check_megatron_is_not_even_imported(tmp_path):
    """Writing and the checksum re-read use torch.distributed.checkpoint alone: Megatron-core
    (seconds of imports and a process-group set-up) is loaded only for the logits check."""
    assert _megatron_modules_after(f"api.hf_to_nemo('tiny', {str(tmp_path / 'out')!r}, verify_logits=False, "
                                   "log=lambda *a: None)") == "[]"
    assert (tmp_path / "out" / "model_weights" / ".metadata").is_file()
    # NeMo -> HF of the kit's layout maps every tensor in place: no Megatron either.
    assert _megatron_modules_after(f"api.nemo_to_hf({str(tmp_path / 'out')!r}, {str(tmp_path / 'hf')!r}, "
                                   "verify_logits=False, log=lambda *a: None)") == "[]"
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_with_the_logits_check_megatron_is_imported_in_the_background_while_the_weights_are_written(tmp_path):
    """Both directions start Megatron-core's import (seconds) on another thread before writing and
    the logits check waits for it; the import stays quiet (no Megatron or torch.jit warnings on
    stderr, even with every warning shown) and the record says how long the check waited."""
    import subprocess
    import sys

    nemo, hf = str(tmp_path / "nemo"), str(tmp_path / "hf")
    code = f"""
import sys, threading
from tunekit.convert import api
who = {{}}
def audit(event, args):   # which thread imports Megatron's transformer package first
    if event == "import" and args[0] == "megatron.core.transformer" and "t" not in who:
        who["t"] = threading.current_thread().name
sys.addaudithook(audit)
r = api.hf_to_nemo("tiny", {nemo!r}, log=lambda *a: None)
print(who.get("t"), r.summary["verification"]["megatron_import_wait_s"] >= 0)
r = api.nemo_to_hf({nemo!r}, {hf!r}, log=lambda *a: None)
print(r.summary["verification"]["logits_match"], "megatron_import_wait_s" in r.summary["verification"])
"""
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    said = [ln.split() for ln in out.stdout.splitlines() if ln and "%|" not in ln]   # not the byte bars
    assert said == [["tunekit-megatron-import", "True"], ["True", "True"]], out.stdout
    assert "megatron" not in out.stderr and "script_method" not in out.stderr, out.stderr[-2000:]


def test_a_failed_background_import_of_megatron_is_retried_where_megatron_is_needed(monkeypatch):
    """The prefetch is only a head start: when it fails (an import race with the main thread is
    reported as a deadlock), `import_megatron` imports again on its own thread; a failure there
    is raised."""
    import threading

    from tunekit.convert import megatron_cpu

    real = megatron_cpu._import_pieces

    def fails_in_background() -> None:
        if threading.current_thread().name == "tunekit-megatron-import":
            raise ImportError("planted: a race in the background")
        real()

    def broken() -> None:
        raise ImportError("planted: megatron.core is broken")

    monkeypatch.setattr(megatron_cpu, "_imported", lambda: False)   # as in a fresh process
    monkeypatch.setattr(megatron_cpu, "_import_pieces", fails_in_background)
    assert megatron_cpu.prefetch_megatron() is True
    assert megatron_cpu.import_megatron().__name__ == "megatron.core"
    assert isinstance(megatron_cpu._PREFETCH.error, ImportError)   # it did fail there
    monkeypatch.setattr(megatron_cpu, "_import_pieces", broken)
    assert megatron_cpu.prefetch_megatron() is True
    with pytest.raises(ImportError, match="planted"):
        megatron_cpu.import_megatron()
    # Once imported, nothing starts, and the wait recorded by an earlier conversion is not reused.
    monkeypatch.setattr(megatron_cpu._PREFETCH, "waited_s", 5.0)
    monkeypatch.setattr(megatron_cpu, "_imported", lambda: True)
    assert megatron_cpu.prefetch_megatron() is False and megatron_cpu.prefetch_wait_s() == 0.0
