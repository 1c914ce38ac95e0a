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

from tunekit.train.lora import LoraSpec

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
    from tunekit.train.batches import make_pair

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


def random_pairs(n: int, seed: int = 1, vocab: int = 61):
    """`n` short random pairs (prompt 3-7 ids starting with bos, responses 1-5 ids)."""
    from tunekit.train.batches import make_pair

    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        p = [1] + rng.integers(5, vocab, rng.integers(2, 7)).tolist()
        c = rng.integers(5, vocab, rng.integers(1, 6)).tolist()
        r = rng.integers(5, vocab, rng.integers(1, 6)).tolist()
        pairs.append(make_pair(p, c, r))
    return pairs


def random_batch(seed: int = 0, n: int = 2, t: int = 16, vocab: int = 96):
    """(ids, labels) of random sequences, labels = the next id (plain causal LM targets, wrapped)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, t), generator=g)
    return ids, torch.roll(ids, -1, 1)


def micro_batches(items, size: int) -> list[list]:
    """Consecutive groups of `size` items (the last may be shorter)."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def live_reference(lm):
    """A DPO Reference from a separately held frozen model: what the cache replaces (tests, benchmarks)."""
    import torch

    from tunekit.train.batches import policy_logps

    lm = lm.eval()
    for p in lm.parameters():
        p.requires_grad_(False)

    def reference(_policy, pb):
        with torch.no_grad():
            return policy_logps(lm, pb)

    return reference


# ------------------------------------------------------------------ models and weights
def tiny_lm(seed: int = 0, vocab: int = 61):
    """An in-memory 2-layer LLaMA with hidden 32 (fp32, SDPA, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=4, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def training_model(model_dir: Path, lora=None, precision: str = "fp32"):
    """(model, env): the engine's FSDP2 training model of `model_dir` in this process (world size 1)."""
    from tunekit.train.distributed import init_distributed
    from tunekit.train.engine import load_for_training

    env = init_distributed()
    model, _ = load_for_training(Path(model_dir), env, precision=precision, attn_implementation="sdpa",
                                 lora=lora)
    return model.train(), env


def trainable_summary(model) -> dict:
    """Parameter counts: total, trainable and their share (adapters only under LoRA)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": total, "trainable_params": trainable, "trainable_share": trainable / total if total else 0.0}


def benchmark_module(name: str):
    """Import benchmarks/<name>.py (dev scripts that are not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

# The LoRA shape of the LoRA unit tests: a few targets, rank 4, a fixed init seed.
LORA_SPEC = LoraSpec(rank=4, alpha=8.0, dropout=0.0, targets=("q_proj", "v_proj", "o_proj", "down_proj"), seed=7)


def perturb_adapters(model, seed: int = 1, scale: float = 0.3) -> None:
    """Give every LoRA B non-zero values (as training would), so the adapters change the output."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                local = p.to_local() if hasattr(p, "to_local") else p
                local.copy_(torch.randn(local.shape, generator=g) * scale)


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


# ------------------------------------------------------------------ notebook summary outputs
def _sanitize_rules() -> list[tuple[str, str]]:
    """(regex, replacement) pairs of tests/nbval_sanitize.cfg (nbval's format: [section] regex/replace)."""
    import configparser

    cp = configparser.ConfigParser(interpolation=None)
    cp.read(Path(__file__).resolve().parent / "nbval_sanitize.cfg", encoding="utf-8")
    return [(cp[s]["regex"], cp[s]["replace"]) for s in cp.sections()]


def sanitize_outputs(outputs: list[dict]) -> list[str]:
    """The comparable text of a cell's outputs: stdout and text/plain, with the sanitizing rules applied.

    Like the nbval setup it replaces: stderr, HTML, JS, images and widgets are not compared.
    """
    import re

    texts = []
    for o in outputs:
        if o.get("output_type") == "stream" and o.get("name") == "stdout":
            text = o.get("text", "")
        elif o.get("output_type") in ("execute_result", "display_data") and "text/plain" in o.get("data", {}):
            text = o["data"]["text/plain"]
        else:
            continue
        text = "".join(text) if isinstance(text, list) else text
        for regex, replace in _sanitize_rules():
            text = re.sub(regex, replace, text)
        texts.append(text)
    return texts


# ------------------------------------------------------------------ wandb's offline run files
def read_wandb_history(run_root: Path) -> dict[int, dict[str, str]]:
    """{step: {key: value_json}} of the one offline wandb run under `run_root`, read from its .wandb file.

    The .wandb file is a LevelDB-style log (32 KiB blocks of records with a 7-byte header: crc32c,
    length, type FULL/FIRST/MIDDLE/LAST) after wandb's own 7-byte header (":W&B", magic, version);
    each record is a `wandb_internal_pb2.Record`, parsed with the protobuf schema wandb ships.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = sorted(Path(run_root).glob("wandb/offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb transaction log"
    pos, block, payloads, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    history: dict[int, dict[str, str]] = {}
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): i.value_json for i in record.history.item}
            history.setdefault(record.history.step.num, {}).update(items)
    return history


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


def install_kill(after_step: int = 0, in_save: int = 0) -> None:
    """SIGKILL this process right after training step N was reported, or after checkpoint N's model part."""
    import os
    import signal

    if after_step:
        from tunekit.train.monitor import Monitor

        orig = Monitor.step

        def step(self, record):
            orig(self, record)
            if record["step"] == after_step:
                os.kill(os.getpid(), signal.SIGKILL)

        Monitor.step = step
    if in_save:
        import torch.distributed.checkpoint as dcp

        orig_save = dcp.save

        def save(state, checkpoint_id=None, **kw):
            orig_save(state, checkpoint_id=checkpoint_id, **kw)
            if "step_%08d" % in_save in str(checkpoint_id):
                os.kill(os.getpid(), signal.SIGKILL)

        dcp.save = save


def install_term(spec: str) -> None:
    """Send this process SIGTERM at a chosen moment, as PBS (qdel, walltime) or a launcher would.

    `spec` is `<moment>:<n>[@rank<r>][,twice|,dup]`:
        after_step:N     right after step N was reported
        in_backward:N    between step N's backward and its optimizer step
        in_validation:K  when the K-th validation pass starts (K=1: the step-0 validation)
        in_save:N        after the model part of checkpoint N was written, before the rest
    `@rank<r>` signals only that rank (the others learn it through the loop's all-reduce);
    `,twice` sends a second SIGTERM 1.5 s later (it must end the process at once), `,dup` a
    second one immediately (the same stop arriving by two routes: it must change nothing).
    """
    import os
    import signal
    import time

    head, _, variant = spec.partition(",")
    where, _, target = head.partition("@")
    moment, _, n = where.partition(":")
    n = int(n)
    rank = int(target.removeprefix("rank")) if target else None

    def fire():
        if rank is not None and int(os.environ.get("RANK", "0")) != rank:
            return
        os.kill(os.getpid(), signal.SIGTERM)
        if variant == "dup":
            os.kill(os.getpid(), signal.SIGTERM)
        elif variant == "twice":
            time.sleep(1.5)
            os.kill(os.getpid(), signal.SIGTERM)

    from tunekit.train import engine

    if moment == "after_step":
        from tunekit.train.monitor import Monitor

        orig_step = Monitor.step

        def step(self, record):
            orig_step(self, record)
            if record["step"] == n:
                fire()

        Monitor.step = step
    elif moment == "in_backward":
        orig_norm, calls = engine._grad_norm, [0]

        def grad_norm(model, max_norm):
            calls[0] += 1
            if calls[0] == n:
                fire()
            return orig_norm(model, max_norm)

        engine._grad_norm = grad_norm
    elif moment == "in_validation":
        orig_eval, calls = engine.evaluate, [0]

        def evaluate(*a, **k):
            calls[0] += 1
            if calls[0] == n:
                fire()
            return orig_eval(*a, **k)

        engine.evaluate = evaluate
    elif moment == "in_save":
        import torch.distributed.checkpoint as dcp

        orig_save = dcp.save

        def save(state, checkpoint_id=None, **kw):
            orig_save(state, checkpoint_id=checkpoint_id, **kw)
            if "step_%08d" % n in str(checkpoint_id) and str(checkpoint_id).endswith("model"):
                fire()

        dcp.save = save
    else:
        raise ValueError(f"unknown moment {moment!r}")


def main(argv: list[str] | None = None) -> int:
    """One training rank: on synthetic data (`sft|dpo ...`), or the kit's own entry (`cli train ...`)."""
    import argparse
    import sys

    import yaml

    from tunekit.train.distributed import exit_worker, init_distributed, shutdown

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="tests/helpers.py", description=main.__doc__)
    ap.add_argument("stage", choices=["sft", "dpo", "cli"])
    ap.add_argument("--kill-after-step", type=int, default=0, help="SIGKILL right after this training step")
    ap.add_argument("--kill-in-save", type=int, default=0, help="SIGKILL inside the save of this step")
    ap.add_argument("--term", default="", help="SIGTERM at a moment (see install_term)")
    if argv and argv[0] == "cli":  # the rest goes to `tunekit ...` unchanged
        args, rest = ap.parse_known_args(argv)
        install_kill(args.kill_after_step, args.kill_in_save)
        if args.term:
            install_term(args.term)
        from tunekit.cli import main as tunekit_main

        return tunekit_main(rest)
    ap.add_argument("--params", required=True, help="params YAML (the notebook's parameters)")
    ap.add_argument("--model-dir", required=True, help="HF model dir (its vocab bounds the token ids)")
    ap.add_argument("--n-train", type=int, default=120)
    ap.add_argument("--n-dev", type=int, default=30)
    args = ap.parse_args(argv)
    install_kill(args.kill_after_step, args.kill_in_save)
    if args.term:
        install_term(args.term)
    params = yaml.safe_load(Path(args.params).read_text())
    env = init_distributed()
    ok = False
    try:
        _, res = train_synthetic(args.stage, params, Path(args.model_dir), args.n_train, args.n_dev, env=env)
        if env.is_main:
            loss = f"{res['final_loss']:.6f}" if res["final_loss"] is not None else "-"
            print(f"{res['status']}: step {res['step']}/{res['total_steps']} loss {loss}", flush=True)
        ok = True
    finally:
        shutdown(clean=ok)
    import signal

    from tunekit.signals import exit_code

    code = exit_code(getattr(signal, res["stop_signal"])) if res.get("stop_signal") else 0
    exit_worker(code)
    return code


def run_worker(args: list[str], tmp_path: Path | None = None, nproc: int = 1, timeout: int = 600,
               env: dict | None = None):
    """Run `python tests/helpers.py <args>` (under torchrun when nproc > 1) with one thread per process."""
    import os
    import subprocess
    import sys

    environ = dict(os.environ, OMP_NUM_THREADS="1", TUNEKIT_HEADLESS="1", PYTHONHASHSEED="0", **(env or {}))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environ.pop(k, None)
    me = str(Path(__file__).resolve())
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] \
        if nproc > 1 else [sys.executable]
    return subprocess.run([*launcher, me, *args], env=environ, capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    import sys

    sys.exit(main())
