"""NeMo interop with checkpoints as the official kit's NeMo writes them, and with its exporter.

1. A training checkpoint written like NeMo writes one: weights at TP=2 x PP=2 by Megatron-core's
   own `dist_checkpointing.save` (4 gloo processes), the whole Lightning checkpoint dict beside them
   (epoch, global_step, pytorch-lightning_version, hyper_parameters holding the model config as an
   OmegaConf DictConfig, loops, callbacks with a tensor, ...: all of it lands in `common.pt`), the
   official training-output layout (`checkpoints/model_config.yaml` + `step=*` folders) and a
   `tokenizer.type` that points to a path that does not exist here. `nemo-to-hf` must convert it
   with default verification on, ignoring and reporting the non-model entries.
2. The kit's hf-to-nemo output run through the mapping logic of the official exporter
   (`tuning/scripts/ckpt/convert_llama_nemo_to_hf.py`, transcribed below from a reading of it, not
   copied): it loads `tokenizer.type` with AutoModelForCausalLM/AutoTokenizer, maps the Megatron
   names back and loads them strictly; the result must equal the source model.
OmegaConf is not installed in the kit's environment (its antlr pin conflicts with Math-Verify's),
so the writer processes register a stand-in `omegaconf.dictconfig.DictConfig` class: what matters
is that the pickle in `common.pt` names a class the reading process cannot import.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tunekit.errors import UserError

pytestmark = pytest.mark.slow
QUIET = dict(log=lambda *a: None)
MISSING_TOKENIZER = "/groups/gxx00000/models/llm-jp-4-8b-instruct"   # not on this machine


def _stand_in_omegaconf():
    """A module `omegaconf.dictconfig` with a DictConfig that pickles like a container (stand-in)."""
    import sys
    import types

    class DictConfig:
        def __init__(self, content):
            self._content, self._metadata = dict(content), {"object_type": dict, "flags": {}}

        def __getstate__(self):
            return {"_content": self._content, "_metadata": self._metadata, "_parent": None}

        def __setstate__(self, state):
            self.__dict__.update(state)

    mod, sub = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.dictconfig")
    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    sub.DictConfig, mod.dictconfig = DictConfig, sub
    sys.modules.update({"omegaconf": mod, "omegaconf.dictconfig": sub})
    return DictConfig


def _trainer_state(step: int, model_cfg: dict) -> dict:
    """The non-model part of a NeMo/Lightning training checkpoint dict (what ends up in common.pt)."""
    DictConfig = _stand_in_omegaconf()
    return {
        "epoch": 0, "global_step": step, "pytorch-lightning_version": "2.3.3", "state_dict": {},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 1, "completed": 0}}}},
        "callbacks": {"NeMoModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "monitor": "val_loss", "best_model_score": torch.tensor(1.23), "best_model_path": "/x/step=10.ckpt"}},
        "optimizer_states": [], "lr_schedulers": [{"last_epoch": step, "_step_count": step + 1}],
        "hparams_name": "cfg", "hyper_parameters": {"cfg": DictConfig(model_cfg)},
    }


def _save_like_nemo(rank: int, world: int, tp: int, pp: int, store: str, src: str, dst: str, step: int) -> None:
    """One rank: a TP x PP GPTModel loaded from the TP=1 dir, saved the way NeMo saves a checkpoint."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from test_convert_parallel import _build
    from tunekit.convert import configs
    from tunekit.convert.megatron_cpu import cpu_shims, import_megatron, quiet
    from tunekit.convert.torch_dist import NemoWeights

    import_megatron()
    from megatron.core import dist_checkpointing, parallel_state

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    with cpu_shims():
        with quiet():
            parallel_state.initialize_model_parallel(tp, pp)
        cfg = configs.read_yaml(Path(src) / "model_config.yaml")
        weights = Path(src) / "model_weights"
        spec = configs.spec_from_nemo_config(cfg, NemoWeights(weights).vocab_size, "model_config.yaml")
        model = _build(spec, tp, pp, parallel_state)
        state = dist_checkpointing.load(model.sharded_state_dict(prefix="model."), str(weights))
        model.load_state_dict({k[len("model."):]: v for k, v in state.items()}, strict=False)
        # NeMo: checkpoint = Lightning's dict + `sharded_state_dict`; Megatron saves the tensors
        # sharded and everything else into common.pt.
        checkpoint = {**_trainer_state(step, cfg), "sharded_state_dict": model.sharded_state_dict(prefix="model.")}
        dist_checkpointing.save(checkpoint, dst)
        parallel_state.destroy_model_parallel()
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def padded_tiny(tmp_path_factory) -> Path:
    from test_convert_parallel import _padded_vocab_model
    from tunekit.model import tiny_model_dir

    return _padded_vocab_model(tiny_model_dir(), tmp_path_factory.mktemp("hf") / "src")


def test_nemo_training_output_with_trainer_state_converts_with_verification(padded_tiny, tmp_path):
    import torch.multiprocessing as mp
    from torch.distributed.checkpoint import FileSystemReader

    from tunekit.convert import api
    from tunekit.convert.hf_files import HFWeights
    from tunekit.model import tiny_tokenizer_dir

    tp1 = tmp_path / "tp1"
    api.hf_to_nemo(str(padded_tiny), tp1, verify_logits=False, **QUIET)
    out = tmp_path / "sft_out"
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True)
    cfg = yaml.safe_load((tp1 / "model_config.yaml").read_text())
    cfg["tokenizer"]["type"] = MISSING_TOKENIZER    # trained elsewhere; that path is not here
    cfg.update(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    (ckpts / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    last = ckpts / "step=20-last"
    last.mkdir()   # Megatron saves into an existing, empty folder
    mp.spawn(_save_like_nemo, args=(4, 2, 2, str(tmp_path / "pg"), str(tp1), str(last), 20), nprocs=4, join=True)

    md = FileSystemReader(str(last)).read_metadata().state_dict_metadata
    assert len(md["model.decoder.layers.self_attention.linear_qkv.weight"].chunks) == 2 * 2  # TP2 x 2 layers
    # The planted failure: common.pt holds the trainer state, and plain torch.load refuses it here.
    with pytest.raises(Exception, match="Weights only load failed|omegaconf"):
        torch.load(last / "common.pt")

    with pytest.raises(UserError, match=f"tokenizer.type {MISSING_TOKENIZER} does not exist here"):
        api.nemo_to_hf(str(out), tmp_path / "hf_x", **QUIET)
    res = api.nemo_to_hf(str(out), tmp_path / "hf", tokenizer=str(tiny_tokenizer_dir()), **QUIET)
    v = res.summary["verification"]
    assert v["logits_match"] and v["weights_bit_exact"] and v["tensors_compared"] > 0
    assert res.summary["checkpoint"] == "step=20-last"
    assert {"epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "callbacks",
            "loops", "lr_schedulers"} <= set(res.summary["ignored_non_model_entries"])
    a, b = HFWeights(padded_tiny), HFWeights(tmp_path / "hf")
    assert a.entries.keys() == b.entries.keys()
    assert all(torch.equal(a.get(k), b.get(k)) for k in a.entries)


# ------------------------------------------------------------------ the official exporter's logic
OFFICIAL_CHAT_TEMPLATE = (  # the official export script's template (qsub_nemo_to_hf_llama.sh)
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '\\n\\n### 指示:\\n' + message['content'] }}"
    "{% elif message['role'] == 'system' %}{{ '以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。' }}"  # noqa: E501
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\n### 応答:\\n' + message['content'] + eos_token }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '\\n\\n### 応答:\\n' }}{% endif %}{% endfor %}")


def _nemo_model_state(nemo_dir: Path) -> tuple[dict, dict]:
    """(model_config.yaml, NeMo state dict at TP=1 PP=1 with per-layer `model.decoder.layers.N...` keys).

    What `MegatronGPTModel.restore_from(...).state_dict()` gives the exporter: Megatron-core's GPT
    module under NeMo's `model.` attribute, loaded by Megatron from model_weights/.
    """
    from tunekit.convert import configs, verify
    from tunekit.convert.megatron_cpu import megatron_on_cpu
    from tunekit.convert.torch_dist import NemoWeights

    cfg = configs.read_yaml(nemo_dir / "model_config.yaml")
    with megatron_on_cpu():
        spec = configs.spec_from_nemo_config(cfg, NemoWeights(nemo_dir / "model_weights").vocab_size, "cfg")
        model = verify.load_gpt(spec, nemo_dir / "model_weights")
        state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items() if "_extra_state" not in k}
    # NeMo builds the TransformerEngine layer spec (transformer_engine: true), whose linear layers
    # own the RMSNorm weights; the CPU-only local spec names the same tensors after the norm modules.
    te_names = {".input_layernorm.weight": ".self_attention.linear_qkv.layer_norm_weight",
                ".pre_mlp_layernorm.weight": ".mlp.linear_fc1.layer_norm_weight"}
    for local, te in te_names.items():
        state = {(k.replace(local, te) if k.endswith(local) else k): v for k, v in state.items()}
    return cfg, state


def _official_export_mapping(cfg: dict, sd: dict, dtype: torch.dtype) -> dict:
    """The exporter's NeMo -> HF name and layout mapping, step by step as it does it."""
    hidden, heads, ffn = cfg["hidden_size"], cfg["num_attention_heads"], cfg["ffn_hidden_size"]
    groups = cfg.get("num_query_groups", heads)
    head_size = hidden // heads            # the exporter derives it; it does not read kv_channels
    per_group = heads // groups
    rows = heads + 2 * groups
    q_rows = torch.cat([torch.arange((per_group + 2) * g, (per_group + 2) * g + per_group) for g in range(groups)])
    k_rows = torch.arange(per_group, rows, per_group + 2)
    v_rows = torch.arange(per_group + 1, rows, per_group + 2)
    out = {"model.embed_tokens.weight": sd["model.embedding.word_embeddings.weight"].to(dtype)}
    for n in range(cfg["num_layers"]):
        pre = f"model.decoder.layers.{n}."
        qkv = sd[pre + "self_attention.linear_qkv.weight"].reshape(rows, head_size, hidden)
        out[f"model.layers.{n}.self_attn.q_proj.weight"] = qkv[q_rows].reshape(-1, hidden).to(dtype)
        out[f"model.layers.{n}.self_attn.k_proj.weight"] = qkv[k_rows].reshape(-1, hidden).to(dtype)
        out[f"model.layers.{n}.self_attn.v_proj.weight"] = qkv[v_rows].reshape(-1, hidden).to(dtype)
        out[f"model.layers.{n}.self_attn.o_proj.weight"] = sd[pre + "self_attention.linear_proj.weight"].to(dtype)
        fc1 = sd[pre + "mlp.linear_fc1.weight"]
        out[f"model.layers.{n}.mlp.gate_proj.weight"] = fc1[:ffn, :].to(dtype)     # first half
        out[f"model.layers.{n}.mlp.up_proj.weight"] = fc1[ffn:, :].to(dtype)       # second half
        out[f"model.layers.{n}.mlp.down_proj.weight"] = sd[pre + "mlp.linear_fc2.weight"].to(dtype)
        out[f"model.layers.{n}.input_layernorm.weight"] = \
            sd[pre + "self_attention.linear_qkv.layer_norm_weight"].to(dtype)
        out[f"model.layers.{n}.post_attention_layernorm.weight"] = \
            sd[pre + "mlp.linear_fc1.layer_norm_weight"].to(dtype)
    out["model.norm.weight"] = sd["model.decoder.final_layernorm.weight"].to(dtype)
    out["lm_head.weight"] = sd["model.output_layer.weight"].to(dtype)
    return out


def _precision_dtype(precision) -> torch.dtype:
    if precision in (32, "32"):
        return torch.float32
    if precision in (16, "16", "16-mixed"):
        return torch.float16
    if precision in ("bf16", "bf16-mixed"):
        return torch.bfloat16
    return torch.float32


def test_official_exporter_logic_runs_on_the_kits_nemo_output(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.convert import api
    from tunekit.convert.hf_files import HFWeights
    from tunekit.model import compat, tiny_model_dir

    src = tmp_path / "src"                 # on the same filesystem as the output
    shutil.copytree(tiny_model_dir(), src)
    nemo = tmp_path / "nemo"
    mode = (src / "model.safetensors").stat().st_mode
    res = api.hf_to_nemo(str(src), nemo, **QUIET)
    # tokenizer/ is a whole HF model; its weights are hard links (no extra disk, source untouched).
    assert res.summary["tokenizer_dir_weights"] == "hard links"
    assert (nemo / "tokenizer" / "model.safetensors").stat().st_ino == (src / "model.safetensors").stat().st_ino
    assert (src / "model.safetensors").stat().st_mode == mode
    cfg, sd = _nemo_model_state(nemo)
    input_hf_path = cfg["tokenizer"]["type"]           # get_input_hf_path(): the config's tokenizer.type
    assert Path(input_hf_path) == nemo / "tokenizer"
    dtype = _precision_dtype(cfg["precision"])
    converted = _official_export_mapping(cfg, sd, dtype)

    orig = AutoModelForCausalLM.from_pretrained(input_hf_path, dtype=dtype)   # needs a WHOLE model there
    tok = AutoTokenizer.from_pretrained(input_hf_path)
    assert len(tok) <= orig.config.vocab_size          # no resize_token_embeddings needed
    tok.chat_template = OFFICIAL_CHAT_TEMPLATE
    orig.load_state_dict(converted)                    # strict: every name and shape must match
    out = tmp_path / "exported"
    orig.save_pretrained(str(out))
    tok.save_pretrained(str(out))

    a, b = HFWeights(src), HFWeights(out)
    assert a.entries.keys() == b.entries.keys()
    for k in a.entries:
        assert torch.equal(a.get(k).to(dtype), b.get(k)), k
    # The same folder is what the official training environment (transformers 4.47) reads as the
    # tokenizer: identical config, ids and chat-prompt ids there.
    assert compat.check_folder(nemo / "tokenizer", "official-training")["differences"] == []
    # The planted failure: a tokenizer-only folder (what the kit wrote before) cannot be loaded so.
    only_tok = tmp_path / "tokenizer_only"
    only_tok.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(nemo / "tokenizer" / f, only_tok / f)
    with pytest.raises((OSError, ValueError), match="config.json|model_type"):
        AutoModelForCausalLM.from_pretrained(str(only_tok), dtype=dtype)


def test_reference_weights_are_copied_where_hard_links_fail(tmp_path, monkeypatch):
    from tunekit.convert import api
    from tunekit.model import tiny_model_dir

    def no_links(*a, **k):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    res = api.hf_to_nemo(str(tiny_model_dir()), tmp_path / "nemo", verify_logits=False, **QUIET)
    assert res.summary["tokenizer_dir_weights"] == "copies"
    copied = tmp_path / "nemo" / "tokenizer" / "model.safetensors"
    assert copied.stat().st_nlink == 1
    assert copied.read_bytes() == (tiny_model_dir() / "model.safetensors").read_bytes()
