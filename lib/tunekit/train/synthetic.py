"""Synthetic packed SFT data in the exact `tunekit.data.packing` item format (tests and benchmarks).

Not a data pipeline: the real one tokenises conversations (tunekit.data). This builds documents
of random tokens with a learnable rule (each response repeats its prompt shifted by one id), and
packs them greedily into fixed-length sequences with the contract's fields, so the engine can be
tested and benchmarked without a tokenizer:

    input_ids, labels (shifted, -100 on prompts, on each document's last token and on padding),
    position_ids (restart per document), doc_lens (sum to the sequence length; padding is the last doc)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100


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


def _labels_of(doc: Doc) -> np.ndarray:
    # labels[t] = ids[t + 1] where the NEXT token is trained on; the last token predicts nothing.
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
        labels = [_labels_of(d) for d in cur]
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


def tiny_llama_dir(path, vocab: int = 128, hidden: int = 32, layers: int = 2, seed: int = 0,
                   max_positions: int = 512):
    """Save a tiny random LlamaForCausalLM (fp32, untied, GQA) to `path` unless it exists; returns it."""
    from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    """`python -m tunekit.train.synthetic`: SFT on synthetic packed data (smoke tests, any launcher)."""
    import argparse
    import sys
    from pathlib import Path

    from ..errors import UserError
    from .distributed import init_distributed, shutdown
    from .sft import load_params, open_run_for_worker, train_sft

    ap = argparse.ArgumentParser(prog="python -m tunekit.train.synthetic", description=main.__doc__)
    ap.add_argument("--params", required=True, help="SFT params file (max_seq_length, batches, run_name...)")
    ap.add_argument("--model-dir", required=True, help="HF model dir (its vocab bounds the token ids)")
    ap.add_argument("--n-train", type=int, default=200, help="training documents")
    ap.add_argument("--n-dev", type=int, default=40, help="validation documents")
    args = ap.parse_args(argv)
    try:
        cfg = load_params(args.params, None)
        env = init_distributed()
        ok = False
        try:
            import json

            vocab = json.loads((Path(args.model_dir) / "config.json").read_text())["vocab_size"]
            train = synthetic_packed(args.n_train, cfg.max_seq_length, vocab, seed=cfg.seed)
            dev = synthetic_packed(args.n_dev, cfg.max_seq_length, vocab, seed=cfg.seed + 1)
            run = open_run_for_worker(cfg, None, env)
            res = train_sft(cfg, run, env=env, datasets=(train, dev, {"synthetic": True}),
                            model_dir=Path(args.model_dir))
            if env.is_main:
                print(f"{res['status']}: step {res['step']}/{res['total_steps']} loss {res['final_loss']:.6f}",
                      flush=True)
            ok = True
        finally:
            shutdown(clean=ok)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
