"""NeMo checkpoints as the official kit writes them: tensor- and pipeline-parallel, by Megatron itself.

The official kit trains llm-jp-4-8b with TP4 x PP2, so its torch_dist checkpoints hold each layer's
tensors in several chunks (QKV and fc1 split across tensor-parallel ranks, layers across stages).
Here real Megatron-core GPTModels with TP=2 and PP=2 (gloo processes on CPU) load our TP=1 NeMo
dir, save it again with Megatron's own `dist_checkpointing.save`, and the result must convert to
HF bit for bit. Slow: it starts Megatron in several processes.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def _resave_parallel(rank: int, world: int, tp: int, pp: int, store: str, src: str, dst: str) -> None:
    """One rank: build a TP x PP GPTModel, load the TP=1 checkpoint (resharded), save it again."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from tunekit.convert import configs
    from tunekit.convert.megatron_cpu import cpu_shims, import_megatron, quiet
    from tunekit.convert.torch_dist import NemoWeights

    import_megatron()
    from megatron.core import dist_checkpointing, parallel_state

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    with cpu_shims():
        with quiet():
            parallel_state.initialize_model_parallel(tp, pp)
        weights = Path(src) / "model_weights"
        spec = configs.spec_from_nemo_config(configs.read_yaml(Path(src) / "model_config.yaml"),
                                             NemoWeights(weights).vocab_size, "model_config.yaml")
        model = _build(spec, tp, pp, parallel_state)
        state = dist_checkpointing.load(model.sharded_state_dict(prefix="model."), str(weights))
        model.load_state_dict({k[len("model."):]: v for k, v in state.items()}, strict=False)
        dist_checkpointing.save(model.sharded_state_dict(prefix="model."), dst)
        parallel_state.destroy_model_parallel()
    dist.barrier()  # tear down together: a gloo peer that leaves early can abort the other rank
    dist.destroy_process_group()


def _build(spec, tp, pp, parallel_state):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    cfg = TransformerConfig(
        num_layers=spec.num_layers, hidden_size=spec.hidden_size, ffn_hidden_size=spec.ffn_hidden_size,
        num_attention_heads=spec.num_heads, num_query_groups=spec.num_query_groups,
        kv_channels=spec.head_dim, normalization="RMSNorm", layernorm_epsilon=spec.norm_eps,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, pipeline_dtype=torch.float32,
        params_dtype=torch.float32, use_cpu_initialization=True, perform_initialization=False,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False)
    return GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                    vocab_size=spec.vocab_size, max_sequence_length=spec.max_position_embeddings,
                    position_embedding_type="rope", rotary_base=spec.rope_theta,
                    share_embeddings_and_output_weights=False,
                    pre_process=parallel_state.is_pipeline_first_stage(),
                    post_process=parallel_state.is_pipeline_last_stage())


def _padded_vocab_model(tiny: Path, out: Path) -> Path:
    """The tiny model with its vocabulary padded to a multiple of 128, like llm-jp-4 (196,608).

    Tensor parallelism splits the embedding rows evenly, which an odd tiny vocabulary cannot do.
    """
    from transformers import AutoConfig, LlamaForCausalLM

    from tunekit.convert.hf_files import copy_tokenizer_files

    cfg = AutoConfig.from_pretrained(str(tiny))
    cfg.vocab_size = -(-cfg.vocab_size // 128) * 128
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    copy_tokenizer_files(tiny, out)
    return out


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_megatron_parallel_checkpoint_converts_bit_exact(tp, pp, tmp_path):
    import torch.multiprocessing as mp
    from torch.distributed.checkpoint import FileSystemReader

    from tunekit.convert import api
    from tunekit.convert.hf_files import HFWeights
    from tunekit.model import tiny_model_dir

    tiny = _padded_vocab_model(tiny_model_dir(), tmp_path / "hf_src")
    src = tmp_path / "tp1"
    api.hf_to_nemo(str(tiny), src, verify_logits=False, log=lambda *a: None)
    out = tmp_path / "parallel"
    (out / "model_weights").mkdir(parents=True)
    shutil.copy(src / "model_config.yaml", out / "model_config.yaml")
    shutil.copytree(src / "tokenizer", out / "tokenizer")
    store = str(tmp_path / "pg-store")
    mp.spawn(_resave_parallel, args=(tp * pp, tp, pp, store, str(src), str(out / "model_weights")),
             nprocs=tp * pp, join=True)

    md = FileSystemReader(str(out / "model_weights")).read_metadata().state_dict_metadata
    qkv = md["model.decoder.layers.self_attention.linear_qkv.weight"]
    # Truly parallel: per layer, TP splits the rows into tp chunks.
    assert len(qkv.chunks) == 2 * tp

    hf = tmp_path / "hf"
    res = api.nemo_to_hf(str(out), hf, log=lambda *a: None)
    assert res.summary["verification"]["logits_match"]
    a, b = HFWeights(tiny), HFWeights(hf)
    assert a.entries.keys() == b.entries.keys()
    for k in a.entries:
        assert torch.equal(a.get(k), b.get(k)), k
