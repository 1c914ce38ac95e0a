"""`make gpu-smoke`: the first five minutes on a GPU node, one line per check, in order.

    .venv/bin/python tools/gpu_smoke.py            (or: make gpu-smoke; as a PBS job: docs/abci_training.md)

 1 versions    torch, CUDA, cuDNN, NCCL, driver (tunekit.gpu.versions)
 2 cuda        CUDA usable by this torch (else the kit's one-sentence refusal) and a bf16 matmul
 3 nccl        NCCL process group + all-reduce over every local GPU (torchrun, one process per GPU)
 4 varlen      per-document attention (torch's FlashAttention varlen kernel, the kit's default) equals
               the dense block-mask path on a small LLaMA in bf16, logits and gradients (both are
               compared with an fp32 dense reference: varlen may not be further from it than dense)
 5 sft         20 SFT steps of a ~100M-parameter LLaMA with FSDP2 in bf16 on the sample data:
               loss falls, no NaN; tokens/s, MFU and peak memory printed
 6 dpo         10 DPO steps from that SFT run (cached reference): loss falls, no NaN
 7 resume      the SFT run interrupted after its step-10 checkpoint and re-run: it resumes at step
               10 and its steps 11-20 repeat the uninterrupted run (same data, lr; loss within bf16)
 8 eval env    the published model loaded by vLLM in the evaluation environment (make setup-eval):
               greedy answers to 8 prompts, whose prompt ids equal the training template's

Without a usable GPU it stops at once with the reason (exit 0 when no GPU is visible at all,
exit 1 when GPUs are visible but CUDA is unusable, the case the kit refuses to train in). Any
failed check makes the exit code 1. Results also go to <runs>/gpu-smoke/<time>/smoke.json.

`--simulate-on-cpu` runs every check with tiny sizes on the CPU (gloo, fp32, the per-document
reference kernel): what the test suite does, so this script cannot rot between GPU visits. It
proves the plumbing only, never the GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

RESULTS: list[dict] = []


def line(status: str, n: int, name: str, text: str, seconds: float | None = None) -> None:
    took = f" ({seconds:.1f} s)" if seconds is not None else ""
    print(f"[{status:<4}] {n} {name:<9} {text}{took}", flush=True)
    RESULTS.append({"check": name, "status": status, "detail": text, "seconds": seconds})


class Skip(Exception):
    """A check that cannot run here (its reason is the message)."""


def check(n: int, name: str):
    """Run one check: [ok] with its summary, [skip] with the reason, or [FAIL] with the error."""
    def wrap(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                text = fn(*a, **k)
            except Skip as exc:
                line("skip", n, name, str(exc))
                return None
            except Exception as exc:  # noqa: BLE001 - every failure becomes one line, then the next check
                line("FAIL", n, name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                     time.perf_counter() - t0)
                if os.environ.get("GPU_SMOKE_TRACEBACK"):
                    traceback.print_exc()
                return None
            line("ok", n, name, text, time.perf_counter() - t0)
            return True
        return run
    return wrap


# ------------------------------------------------------------------ sizes
def sizes(simulate: bool) -> dict:
    """Model and batch sizes: ~100M parameters on a GPU, tiny on the CPU."""
    if simulate:
        return dict(hidden=64, layers=2, heads=4, kv=2, ffn=128, seq=128, micro=2, glob=4, varlen_seq=128,
                    pairs=24)
    return dict(hidden=768, layers=12, heads=12, kv=4, ffn=2048, seq=1024, micro=8, glob=16, varlen_seq=1024,
                pairs=-1)


def build_model(out: Path, s: dict) -> Path:
    """A random LLaMA of `s` with the kit's tiny tokenizer (so the data path and the chat template work)."""
    import shutil

    import torch
    from transformers import LlamaForCausalLM

    from tunekit.model.fixtures import tiny_config, tiny_model_dir

    tiny = tiny_model_dir()
    cfg = tiny_config(json.loads((tiny / "config.json").read_text())["vocab_size"])
    cfg.update(dict(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                    num_key_value_heads=s["kv"], intermediate_size=s["ffn"], head_dim=s["hidden"] // s["heads"],
                    max_position_embeddings=max(2048, s["seq"])))
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    for f in tiny.iterdir():  # the tokenizer files (and generation config) of the tiny fixture
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out


# ------------------------------------------------------------------ the checks
@check(1, "versions")
def check_versions() -> str:
    from tunekit.gpu import versions, versions_line

    return versions_line(versions())


@check(2, "cuda")
def check_cuda(simulate: bool) -> str:
    import torch

    if simulate:
        return "simulated on the CPU (no CUDA check)"
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    t0 = time.perf_counter()
    for _ in range(20):
        y = x @ x
    torch.cuda.synchronize()
    tflops = 20 * 2 * 4096 ** 3 / (time.perf_counter() - t0) / 1e12
    assert torch.isfinite(y.float()).all()
    p = torch.cuda.get_device_properties(0)
    return f"{torch.cuda.device_count()} x {p.name}, {p.total_memory / 1e9:.0f} GB; bf16 matmul {tflops:.0f} TFLOP/s"


@check(3, "nccl")
def check_nccl(simulate: bool) -> str:
    import torch

    n = 2 if simulate else torch.cuda.device_count()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           str(Path(__file__).resolve()), "--collective-worker"] + (["--simulate-on-cpu"] if simulate else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1])
    return next(x for x in proc.stdout.splitlines() if x.startswith("collective:")).split(":", 1)[1].strip()


def collective_worker(simulate: bool) -> int:
    """One rank of check 3: all-reduce a tensor and check the sum (run under torchrun)."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = torch.device("cpu") if simulate else torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if not simulate:
        torch.cuda.set_device(dev)
    dist.init_process_group("gloo" if simulate else "nccl", **({} if simulate else {"device_id": dev}))
    x = torch.full((64 << 20,) if not simulate else (1024,), float(rank + 1), device=dev)
    dist.all_reduce(x)  # warm-up
    x.fill_(rank + 1)
    if not simulate:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    dist.all_reduce(x)
    if not simulate:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    want = world * (world + 1) / 2
    ok = bool((x == want).all())
    if rank == 0:
        gbs = 2 * (world - 1) / max(world, 1) * x.numel() * 4 / dt / 1e9 if world > 1 else 0.0
        backend = dist.get_backend()
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if not simulate else "-"
        print(f"collective: {backend} (NCCL {nccl}) all-reduce over {world} process(es): sum "
              f"{'correct' if ok else 'WRONG'}, {x.numel() * 4 / 2**20:.0f} MiB in {dt * 1e3:.1f} ms"
              f"{f', bus {gbs:.0f} GB/s' if world > 1 else ''}", flush=True)
    dist.destroy_process_group()
    return 0 if ok else 1


@check(4, "varlen")
def check_varlen(simulate: bool, s: dict) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunekit.train import attention
    from tunekit.train.batches import collate_packed

    attention.register()
    dev = torch.device("cpu" if simulate else "cuda")
    low = torch.float32 if simulate else torch.bfloat16
    cfg = LlamaConfig(vocab_size=4096, hidden_size=512 if not simulate else 64, intermediate_size=1024 if not
                      simulate else 128, num_hidden_layers=4 if not simulate else 2, num_attention_heads=8 if not
                      simulate else 4, num_key_value_heads=2, max_position_embeddings=s["varlen_seq"])
    items = _packed(24 if simulate else 48, s["varlen_seq"], 4096)[:4]
    torch.manual_seed(0)
    base = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").to(dev)
    runs = {}
    for name, impl, dtype in (("ref", "sdpa", torch.float32), ("dense", "sdpa", low),
                              ("varlen", attention.IMPLEMENTATION, low)):
        m = LlamaForCausalLM._from_config(cfg, attn_implementation=impl).to(dev)
        m.load_state_dict(base.state_dict())
        m = m.to(dtype).train()
        b = collate_packed(items, varlen=impl != "sdpa", pad_id=4).to(dev)
        logits = m(**b.model_inputs()).logits.float().reshape(len(items), s["varlen_seq"], -1)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b.labels.reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        runs[name] = (logits.detach(), {k: p.grad.float() for k, p in m.named_parameters()})
    if not simulate:
        assert attention.uses_flash_kernel(dev, low), "the FlashAttention varlen kernel is not selected"

    def err(name):
        lg = (runs[name][0] - runs["ref"][0]).abs().max().item() / runs["ref"][0].abs().max().item()
        gr = max(((runs[name][1][k] - g).norm() / g.norm().clamp_min(1e-12)).item()
                 for k, g in runs["ref"][1].items())
        return lg, gr
    (dl, dg), (vl, vg) = err("dense"), err("varlen")
    for v in (dl, dg, vl, vg):
        assert math.isfinite(v), "NaN/inf"
    tol = 1e-5 if simulate else 0.0
    assert vl <= 2 * dl + tol and vg <= 2 * dg + tol, (f"varlen is further from fp32 than dense (logits {vl:.2e} "
                                                        f"vs {dl:.2e}, grads {vg:.2e} vs {dg:.2e})")
    kernel = attention.describe(dev, low)
    return (f"{kernel}: rel. error vs fp32 dense, logits {vl:.1e} (dense {low} {dl:.1e}), gradients {vg:.1e} "
            f"(dense {dg:.1e}); {len(items)} x {s['varlen_seq']} tokens")


def _packed(n_docs: int, seq: int, vocab: int) -> list[dict]:
    """Packed items of random documents (a learnable rule: the answer repeats the prompt + 1)."""
    import numpy as np

    rng = np.random.default_rng(0)
    items, cur, used = [], [], 0

    def flush():
        nonlocal cur, used
        ids = np.concatenate([d for d in cur] + ([np.full(seq - used, 4)] if used < seq else []))
        lab = np.full(seq, -100)
        pos, lens, at = [], [], 0
        for d in cur:
            half = len(d) // 2
            lab[at + half - 1:at + len(d) - 1] = d[half:]
            pos.append(np.arange(len(d)))
            lens.append(len(d))
            at += len(d)
        if used < seq:
            pos.append(np.arange(seq - used))
            lens.append(seq - used)
        items.append({"input_ids": ids.astype(np.int64), "labels": lab.astype(np.int64),
                      "position_ids": np.concatenate(pos).astype(np.int64), "doc_lens": np.asarray(lens, np.int32)})
        cur, used = [], 0

    for _ in range(n_docs):
        n = int(rng.integers(max(8, seq // 16), seq // 2))
        p = rng.integers(5, vocab - 1, n // 2)
        d = np.concatenate([[1], p, (p + 1)[: n - 1 - len(p)]])
        if used + len(d) > seq:
            flush()
        cur.append(d)
        used += len(d)
    if cur:
        flush()
    return items


def _sft_params(model_dir: Path, runs: Path, s: dict, name: str) -> dict:
    sft = {"max_train_samples": 10 * s["pairs"] if s["pairs"] > 0 else -1, "split_dev": True, "upsampling_factor": 1}
    return dict(model=str(model_dir), datasets={"math_drill": sft, "math_chat": sft}, max_dev_samples=16,
                max_seq_length=s["seq"], global_batch_size=s["glob"],
                micro_batch_size=s["micro"], max_steps=20, lr=1e-3, min_lr=1e-4, warmup_steps=2,
                constant_steps=0, val_interval=0, save_interval=10, publish="final", seed=7,
                run_name=name, runs_dir=str(runs))


def _losses(run) -> list[float]:
    return [r["loss"] for r in run.metrics() if "lr" in r]


def _falls(losses: list[float], what: str) -> None:
    assert losses and all(math.isfinite(x) for x in losses), f"{what}: a loss is NaN/inf"
    k = max(1, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    assert last < first, f"{what}: the loss did not fall ({first:.4f} -> {last:.4f})"


@check(5, "sft")
def check_sft(model_dir: Path, runs: Path, s: dict) -> str:
    from tunekit.runs import start_run
    from tunekit.train.params import SFTParams
    from tunekit.train.sft import train_sft

    cfg = SFTParams.parse(_sft_params(model_dir, runs, s, "smoke-sft"))
    run = start_run("sft", cfg, cfg.run_name, cfg.runs_dir)
    res = train_sft(cfg, run)
    losses = _losses(run)
    _falls(losses, "sft")
    assert res["status"] == "completed" and res["step"] == 20
    mfu = f"MFU {res['mfu']:.1%}" if res.get("mfu") is not None else "MFU n/a (no peak FLOPs known)"
    mem = f", peak {res['peak_mem_gb']:.1f} GB" if res.get("peak_mem_gb") else ""
    return (f"{res['n_params'] / 1e6:.3g}M params, {res['attn_implementation']} attention, {res['compute_dtype']}: "
            f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, {res['tokens_per_s']:.0f} tokens/s, {mfu}{mem}")


@check(6, "dpo")
def check_dpo(runs: Path, s: dict) -> str:
    from tunekit.runs import start_run
    from tunekit.train.dpo import train_dpo
    from tunekit.train.params import DPOParams

    pref = {"math_pref": {"max_train_samples": s["pairs"], "split_dev": True, "upsampling_factor": 1}}
    cfg = DPOParams.parse(dict(init=str(runs / "sft" / "smoke-sft"), datasets=pref, max_seq_length=s["seq"],
                               global_batch_size=s["glob"], micro_batch_size=max(1, s["micro"] // 2), max_steps=10,
                               lr=5e-4, min_lr=5e-5, warmup_steps=1, val_interval=10, save_interval=0,
                               max_dev_samples=16, publish="final", run_name="smoke-dpo", runs_dir=str(runs)))
    run = start_run("dpo", cfg, cfg.run_name, cfg.runs_dir)
    res = train_dpo(cfg, run)
    losses = _losses(run)
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses), "dpo: a loss is NaN/inf"
    dev = [(r["step"], r["val_loss"]) for r in run.metrics() if "val_loss" in r]
    assert [st for st, _ in dev] == [0, 10] and dev[1][1] < dev[0][1], f"dpo: the dev loss did not fall: {dev}"
    acc = [r["val_reward_accuracy"] for r in run.metrics() if "val_reward_accuracy" in r]
    return (f"dev loss {dev[0][1]:.4f} -> {dev[1][1]:.4f}, dev reward accuracy {acc[0]:.2f} -> {acc[-1]:.2f}; "
            f"reference pass {res['data']['reference_cache']['seconds']} s; {res['tokens_per_s']:.0f} tokens/s")


class _Interrupt(Exception):
    pass


@check(7, "resume")
def check_resume(model_dir: Path, runs: Path, s: dict) -> str:
    import tunekit.train.monitor as monitor
    from tunekit.runs import read_metrics, start_run
    from tunekit.train.params import SFTParams
    from tunekit.train.sft import train_sft

    cfg = SFTParams.parse(_sft_params(model_dir, runs, s, "smoke-resume"))
    real = monitor.Monitor.step

    def stop_at_11(self, record):
        if record.get("step") == 11:
            raise _Interrupt  # after step 10's checkpoint, before step 11's
        real(self, record)

    monitor.Monitor.step = stop_at_11
    try:
        train_sft(cfg, start_run("sft", cfg, cfg.run_name, cfg.runs_dir))
        raise AssertionError("the interruption did not happen")
    except _Interrupt:
        pass
    finally:
        monitor.Monitor.step = real
    res = train_sft(cfg, start_run("sft", cfg, cfg.run_name, cfg.runs_dir))
    assert res["resumed_from"] == 10 and res["status"] == "completed", res
    a = {r["step"]: r for r in read_metrics(runs / "sft" / "smoke-sft") if "lr" in r}
    b = {r["step"]: r for r in read_metrics(runs / "sft" / "smoke-resume") if "lr" in r}
    assert sorted(b) == list(range(1, 21)), sorted(b)
    worst = 0.0
    for step in range(11, 21):
        assert b[step]["lr"] == a[step]["lr"] and b[step]["loss_tokens"] == a[step]["loss_tokens"], step
        worst = max(worst, abs(b[step]["loss"] - a[step]["loss"]) / abs(a[step]["loss"]))
    tol = 1e-6 if s["hidden"] < 256 else 2e-2  # bf16 + FlashAttention's non-deterministic backward
    assert worst <= tol, f"steps 11-20 differ from the uninterrupted run by up to {worst:.2e} (tolerance {tol:g})"
    return f"resumed at step 10; steps 11-20: same data and lr, loss within {worst:.1e} of the uninterrupted run"


@check(8, "eval env")
def check_eval(runs: Path, simulate: bool) -> str:
    from tunekit.evaluate import vllm_backend
    from tunekit.evaluate.generate import Decoding
    from tunekit.evaluate.prompts import build_messages

    if vllm_backend.eval_python() is None:
        raise Skip("no evaluation environment (run `make setup-eval` on a GPU node, then this again)")
    model = runs / "sft" / "smoke-sft" / "hf_model"
    problems = ["1+1は？", "3x = 18 を解きなさい。", "2の10乗は？", "半径2の円の面積", "-30 の絶対値",
                "x=1 のとき 4x+4", "7 と 12 の最小公倍数", "√49 は？"]
    messages = [build_messages(p) for p in problems]
    if not simulate:
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()  # this process's training memory, before vLLM claims its share
    out = vllm_backend.run_worker(model, messages, Decoding(max_new_tokens=16), progress=False,
                                  engine={} if simulate else {"gpu_memory_utilization": 0.5, "enforce_eager": True})
    bad = vllm_backend.prompt_mismatches(model, messages, out["prompt_token_ids"])
    assert not bad, f"prompt ids of {len(bad)} of 8 prompts differ from the training template's (first #{bad[0]})"
    assert len(out["outputs"]) == 8 and all(len(o) == 1 for o in out["outputs"])
    return (f"vLLM {out['vllm']}: 8 greedy answers ({out['new_tokens']} tokens in {out['seconds']:.1f} s, engine "
            f"start {out['load_seconds']:.0f} s); prompt ids equal the training template's")


# ------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulate-on-cpu", action="store_true", help="tiny sizes on the CPU (tests only)")
    ap.add_argument("--collective-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.collective_worker:
        return collective_worker(args.simulate_on_cpu)
    os.environ.setdefault("TUNEKIT_HEADLESS", "1")
    import torch

    from tunekit.gpu import cuda_problem, versions, versions_line

    simulate = args.simulate_on_cpu
    if not simulate and not torch.cuda.is_available():
        problem = cuda_problem()
        print(f"[gpu] {versions_line(versions())}")
        if problem:
            print(f"gpu-smoke: FAILED before any check: {problem}", flush=True)
            return 1
        print("gpu-smoke: SKIPPED - no GPU here (nvidia-smi lists none, CUDA_VISIBLE_DEVICES is empty and torch "
              "sees no CUDA device); run it on a GPU node, e.g. as a PBS job on rt_HG (docs/abci_training.md)",
              flush=True)
        return 0
    if simulate:
        os.environ["TUNEKIT_DEVICE"] = "cpu"
    from tunekit.paths import runs_root

    s = sizes(simulate)
    out = runs_root() / "gpu-smoke" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["TUNEKIT_CACHE_DIR"] = str(out / "cache")  # its own caches: nothing shared is reused or left
    t0 = time.perf_counter()
    check_versions()
    check_cuda(simulate)
    check_nccl(simulate)
    check_varlen(simulate, s)
    model_dir = build_model(out / "model", s)
    sft_ok = check_sft(model_dir, out / "runs", s)
    if sft_ok:
        check_dpo(out / "runs", s)
        check_resume(model_dir, out / "runs", s)
        check_eval(out / "runs", simulate)
    else:
        for n, name in ((6, "dpo"), (7, "resume"), (8, "eval env")):
            line("skip", n, name, "needs the SFT run of check 5")
    total = time.perf_counter() - t0
    from tunekit.atomic import write_json

    write_json(out / "smoke.json", {"results": RESULTS, "seconds": total, "simulated": simulate})
    print(table(RESULTS))
    print(f"gpu-smoke: {verdict(RESULTS)} in {total:.0f} s{' (SIMULATED on the CPU)' if simulate else ''}; record: "
          f"{out / 'smoke.json'}", flush=True)
    return 1 if any(r["status"] == "FAIL" for r in RESULTS) else 0


def table(results: list[dict]) -> str:
    """The closing PASS/FAIL/SKIP table, one row per check in order."""
    word = {"ok": "PASS", "FAIL": "FAIL", "skip": "SKIP"}
    rows = [f"  {i:>2} {r['check']:<9} {word[r['status']]}" for i, r in enumerate(results, 1)]
    return "\n".join(["gpu-smoke summary:", *rows])


def verdict(results: list[dict]) -> str:
    """One line: all passed, or PASSED with the checks that were skipped (not proven), or FAILED naming them."""
    failed = [r["check"] for r in results if r["status"] == "FAIL"]
    skipped = [r["check"] for r in results if r["status"] == "skip"]
    n = len(results)
    if failed:
        return f"FAILED - {len(failed)} of {n} checks failed ({', '.join(failed)})"
    if skipped:
        return (f"PASSED {n - len(skipped)} of {n} checks, {len(skipped)} skipped and NOT checked "
                f"({', '.join(skipped)})")
    return f"all checks passed ({n} of {n})"


if __name__ == "__main__":
    sys.exit(main())
