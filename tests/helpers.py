"""Dev-only helpers shared by the tests and the benchmarks: synthetic data, tiny models, digests.

Nothing here ships with the kit. The synthetic data is in the exact item formats the engine takes
(the packed-sequence contract of `tunekit.data.packing` and DPO pairs), built from random token
ids with a learnable rule, so the engine can be tested and benchmarked without a tokenizer.

Run as a script it is one training rank on synthetic data (what the multi-process tests launch):

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/helpers.py \\
        sft --params P.yaml --model-dir M [--n-train 120 --n-dev 30]
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IGNORE = -100


# ------------------------------------------------------------------ packed SFT sequences
@dataclass(frozen=True)
class Doc:
    """One tokenised example: ids and a 0/1 mask of the tokens trained on."""

    ids: np.ndarray
    loss_mask: np.ndarray


def make_documents(n: int, vocab: int, min_len: int, max_len: int, seed: int = 0,
                   first_id: int = 5) -> list[Doc]:
    """`n` documents of `min_len..max_len` tokens: bos, a random prompt, then prompt+1 as the answer."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        p = max(1, (length - 1) // 2)
        prompt = rng.integers(first_id, vocab - 1, size=p)
        answer = (prompt + 1)[: length - 1 - p]
        ids = np.concatenate([[1], prompt, answer]).astype(np.int64)
        mask = np.concatenate([np.zeros(1 + p), np.ones(len(answer))]).astype(np.int8)
        docs.append(Doc(ids, mask))
    return docs


def labels_of(doc: Doc) -> np.ndarray:
    """Shifted labels: labels[t] = ids[t + 1] where the NEXT token is trained on; the last predicts nothing."""
    lab = np.full(len(doc.ids), IGNORE, dtype=np.int64)
    nxt = doc.loss_mask[1:].astype(bool)
    lab[:-1][nxt] = doc.ids[1:][nxt]
    return lab


def pack_documents(docs: list[Doc], seq_len: int, pad_id: int = 4) -> list[dict[str, np.ndarray]]:
    """Greedy first-fit-in-order packing into items of exactly `seq_len` tokens."""
    items, cur = [], []
    used = 0

    def flush():
        nonlocal cur, used
        if not cur:
            return
        ids = [d.ids for d in cur]
        labels = [labels_of(d) for d in cur]
        pos = [np.arange(len(d.ids)) for d in cur]
        lens = [len(d.ids) for d in cur]
        pad = seq_len - used
        if pad:
            ids.append(np.full(pad, pad_id))
            labels.append(np.full(pad, IGNORE))
            pos.append(np.arange(pad))
            lens.append(pad)
        items.append({"input_ids": np.concatenate(ids).astype(np.int64),
                      "labels": np.concatenate(labels).astype(np.int64),
                      "position_ids": np.concatenate(pos).astype(np.int64),
                      "doc_lens": np.asarray(lens, dtype=np.int32)})
        cur, used = [], 0

    for d in docs:
        if len(d.ids) > seq_len:
            raise ValueError(f"document of {len(d.ids)} tokens exceeds seq_len {seq_len}")
        if used + len(d.ids) > seq_len:
            flush()
        cur.append(d)
        used += len(d.ids)
    flush()
    return items


def pad_documents(docs: list[Doc], seq_len: int, pad_id: int = 4) -> list[dict[str, np.ndarray]]:
    """One document per item, padded to `seq_len` (the unpacked baseline for benchmarks)."""
    out = []
    for d in docs:
        out.extend(pack_documents([d], seq_len, pad_id))
    return out


def synthetic_packed(n_docs: int, seq_len: int, vocab: int, seed: int = 0, min_len: int = 8,
                     max_len: int | None = None, pad_id: int = 4) -> list[dict[str, np.ndarray]]:
    """Shortcut: `make_documents` then `pack_documents`."""
    docs = make_documents(n_docs, vocab, min_len, max_len or max(min_len, seq_len // 2), seed)
    return pack_documents(docs, seq_len, pad_id)


# ------------------------------------------------------------------ DPO pairs
def synthetic_pairs(n: int, vocab: int, seed: int = 0, max_prompt: int = 12, max_response: int = 10):
    """`n` preference pairs: bos + random prompt; chosen repeats the prompt's tail + 1, rejected is random."""
    from tunekit.train.dpo_batch import make_pair

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = int(rng.integers(2, max_prompt + 1))
        prompt = np.concatenate([[1], rng.integers(5, vocab - 1, size=p)])
        k = int(rng.integers(1, max_response + 1))
        chosen = (prompt[-k:] + 1) % (vocab - 1)
        rejected = rng.integers(5, vocab - 1, size=int(rng.integers(1, max_response + 1)))
        out.append(make_pair(prompt, chosen, rejected))
    return out


# ------------------------------------------------------------------ models and weights
def tiny_llama_dir(path, vocab: int = 128, hidden: int = 32, layers: int = 2, seed: int = 0,
                   max_positions: int = 512) -> Path:
    """Save a tiny random LlamaForCausalLM (fp32, untied, GQA) to `path` unless it exists; returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=4)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def weights_digest(path: Path) -> str:
    """sha256 over every tensor of a safetensors file: names, dtypes, shapes and raw bytes."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ a training rank on synthetic data
def train_synthetic(stage: str, params: dict, model_dir: Path, n_train: int, n_dev: int,
                    env=None, run=None):
    """One rank's share of SFT or DPO on synthetic data through the engine (collective)."""
    import json

    from tunekit.notebooks import spec

    cfg = spec(stage).params_model().parse(params)
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    if stage == "sft":
        from tunekit.train.sft import train_sft as train

        train_ds = synthetic_packed(n_train, cfg.max_seq_length, vocab, seed=cfg.seed)
        dev_ds = synthetic_packed(n_dev, cfg.max_seq_length, vocab, seed=cfg.seed + 1)
    else:
        from tunekit.train.dpo import train_dpo as train

        train_ds = synthetic_pairs(n_train, vocab, seed=cfg.seed)
        dev_ds = synthetic_pairs(n_dev, vocab, seed=cfg.seed + 1)
    if run is None:
        from tunekit.runs import Run, start_run
        from tunekit.train.distributed import broadcast_object

        where = str(start_run(stage, cfg, cfg.run_name, cfg.runs_dir).dir) if env.is_main else None
        where = Path(broadcast_object(where, env))
        run = Run(where, stage, resumed=(where / "checkpoints").is_dir(), writer=env.is_main)
    return run, train(cfg, run, env=env, datasets=(train_ds, dev_ds, {"synthetic": True}),
                      model_dir=Path(model_dir))


def main(argv: list[str] | None = None) -> int:
    """One training rank on synthetic data (run under torchrun for several processes)."""
    import argparse
    import sys

    import yaml

    from tunekit.train.distributed import init_distributed, shutdown

    ap = argparse.ArgumentParser(prog="tests/helpers.py", description=main.__doc__)
    ap.add_argument("stage", choices=["sft", "dpo"])
    ap.add_argument("--params", required=True, help="params YAML (the notebook's parameters)")
    ap.add_argument("--model-dir", required=True, help="HF model dir (its vocab bounds the token ids)")
    ap.add_argument("--n-train", type=int, default=120)
    ap.add_argument("--n-dev", type=int, default=30)
    args = ap.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text())
    env = init_distributed()
    ok = False
    try:
        _, res = train_synthetic(args.stage, params, Path(args.model_dir), args.n_train, args.n_dev, env=env)
        if env.is_main:
            print(f"{res['status']}: step {res['step']}/{res['total_steps']}", flush=True)
        ok = True
    finally:
        shutdown(clean=ok)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
