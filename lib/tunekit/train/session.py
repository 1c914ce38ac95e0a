"""One training attempt from loaded data to published model; shared by SFT and DPO.

`train_session` takes a task (the objective), datasets and the resolved params, and does the rest:
FSDP2 model, AdamW, schedule, deadline, checkpoints, the loop, `hf_model/` publishing and the
`train_result.json` record that the notebook (or the kernel that launched the workers) reads.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from .checkpoint import CheckpointManager
from .deadline import make_deadline
from .distributed import DistEnv, barrier, broadcast_object
from .layout import TrainPlan
from .loop import LoopSettings, Task, train_loop
from .lora import spec_from_params
from .modeling import load_for_training
from .monitor import Monitor, truncate_metrics
from .publish import PROVENANCE, publish_hf_model
from .schedule import DataOrder, LRSchedule

RESULT_FILE = "train_result.json"


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm weights and biases are not decayed, as in Megatron)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-8)


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's train_result.json (None before the first attempt ended)."""
    path = Path(run_dir) / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _already_published(out: Path, step: int, mode: str) -> bool:
    try:
        prov = json.loads((out / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return prov.get("step") == step and prov.get("publish") == mode


def train_session(*, cfg, run, env: DistEnv, task: Task, train_ds, dev_ds, model_dir: Path,
                  plan: TrainPlan, data_report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (resuming if the run has checkpoints), publish when complete; returns the result record."""
    t_start = time.time()
    deadline = make_deadline(cfg.max_train_minutes, cfg.walltime_margin_minutes, start=t_start)
    ckpt = CheckpointManager(run.path("checkpoints"), env, keep_top_k=cfg.keep_top_k)
    latest = ckpt.latest()
    if env.is_main and latest is not None:
        # Steps after the checkpoint are redone; their old records would duplicate them.
        truncate_metrics(run.dir, latest.step)
    barrier(env)
    lora = spec_from_params(cfg)  # None: full fine-tuning
    model, setup = load_for_training(model_dir, env, precision=cfg.precision,
                                     attn_implementation=cfg.attn_implementation,
                                     activation_checkpointing=cfg.activation_checkpointing,
                                     chunk_tokens=cfg.loss_chunk_tokens, lora=lora)
    optimizer = build_optimizer(model, cfg)
    schedule = LRSchedule(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.constant_steps, plan.total_steps)
    order = DataOrder(plan.n_train, cfg.global_batch_size, cfg.seed)
    monitor = Monitor(run, is_main=env.is_main, total_steps=plan.total_steps, desc=cfg.stage,
                      wandb_mode=cfg.wandb, wandb_project=cfg.wandb_project, config=cfg.to_dict())
    if lora is not None:
        monitor.print(f"LoRA rank {lora.rank} (alpha {lora.alpha:g}) on {','.join(lora.targets)}: "
                      f"{setup.n_trainable / 1e6:.3f}M trainable parameters, base frozen")
    monitor.print(f"{setup.n_params / 1e6:.2f}M parameters, {env.world_size} process(es) on "
                  f"{env.device.type}, {setup.attn_implementation} attention, compute "
                  f"{str(setup.compute_dtype).replace('torch.', '')}; {plan.total_steps} steps x "
                  f"{cfg.global_batch_size} sequences of {cfg.max_seq_length} tokens "
                  f"({plan.grad_accum} micro-batch(es) of {cfg.micro_batch_size} per process); "
                  f"{deadline.describe()}")
    settings = LoopSettings(total_steps=plan.total_steps, global_batch=cfg.global_batch_size,
                            micro_batch=cfg.micro_batch_size, grad_clip=cfg.grad_clip,
                            val_interval=cfg.val_interval, save_interval=cfg.save_interval,
                            deadline=deadline, delete_optimizer_state=cfg.delete_optimizer_state)
    try:
        loop = train_loop(task, model, optimizer, schedule, train_ds, dev_ds, order, ckpt, monitor, env,
                          settings)
    finally:
        monitor.close()
    published, published_step = None, None
    if loop.status == "completed":
        published, published_step = _publish(cfg, run, env, model, ckpt, model_dir, loop.step)
    history = loop.val_history
    metrics = run.metrics() if env.is_main else []
    train_recs = [r for r in metrics if "loss" in r]
    result = {
        "status": loop.status, "step": loop.step, "total_steps": loop.total_steps,
        "resumed_from": loop.resumed_from,
        "final_loss": train_recs[-1]["loss"] if train_recs else loop.final_loss,
        "initial_val_loss": history[0][1] if history and history[0][0] == 0 else None,
        "final_val_loss": history[-1][1] if history else None,
        "best_val_loss": loop.best_val_loss, "best_step": loop.best_step, "val_history": history,
        "tokens_seen": loop.tokens_seen, "train_seconds": loop.train_seconds,
        "tokens_per_s": round(loop.tokens_seen / loop.train_seconds, 1) if loop.train_seconds else None,
        "world_size": env.world_size, "device": env.device.type,
        "attn_implementation": setup.attn_implementation,
        "compute_dtype": str(setup.compute_dtype).replace("torch.", ""), "n_params": setup.n_params,
        "plan": plan.to_dict(), "data": data_report or {}, "model_dir": str(model_dir),
        "hf_model": str(published) if published else None, "published_step": published_step,
        "peft": "lora" if lora is not None else "none", "trainable_params": setup.n_trainable,
        "lora_adapter": str(run.path("lora_adapter")) if published and lora is not None else None,
        "attempt_seconds": round(time.time() - t_start, 1),
    }
    if env.is_main:
        atomic.write_json(run.path(RESULT_FILE), result)
    barrier(env)
    return result


def _publish(cfg, run, env: DistEnv, model, ckpt: CheckpointManager, model_dir: Path,
             final_step: int) -> tuple[Path | None, int | None]:
    """Publish the best (lowest val loss) or final weights into <run_dir>/hf_model/."""
    out = run.path("hf_model")
    step = final_step
    if cfg.publish == "best":
        best = ckpt.best()
        if best is not None and best.step != final_step:
            ckpt.load(best, model)  # weights only; training is over
            step = best.step
    done = broadcast_object(_already_published(out, step, cfg.publish) if env.is_main else None, env)
    if done:
        return out, step
    prov = {"run_dir": str(run.dir), "stage": cfg.stage, "step": step, "publish": cfg.publish,
            "base_model": str(model_dir)}
    publish_hf_model(model, env, model_dir, out, prov)
    if env.is_main:
        print(f"published the {cfg.publish} weights (step {step}) to {out}", flush=True)
    return out, step

