"""The training engine shared by SFT and DPO: model setup, the loop, checkpoints and resume, publishing.

    prepare(...) -> Prepared      model dir, data, plan, checked in the notebook before any training
    run_prepared(prep, ...)       notebook cell: train in this kernel, or launch workers and wait
    train(task, cfg, run, ...)    one process's share of a training attempt, end to end:
        load_for_training         HF model on the meta device -> FSDP2 (per layer + root) -> weights
                                  streamed from rank 0; returns log p(label) via the chunked head
        build_optimizer           AdamW, weight decay on matrices only
        train_loop                accumulation, AdamW steps, validation, checkpoints, deadline
        publish                   best or final weights -> <run_dir>/hf_model/ (publish.py)
        train_result.json         what the notebook (or the kernel that launched workers) reads

A stage (sft.py, dpo.py) supplies a `Task`: how dataset items become a batch, and the batch's loss
as a SUM plus extra metric sums. The loop divides by the normaliser summed over the WHOLE global
batch (all micro-batches on all ranks), counted before the first backward:

    loss = sum over every labelled token (SFT) / pair (DPO) of the global batch / their number

So every trained token weighs the same however documents fall into micro-batches and ranks, the
gradient does not depend on micro_batch_size or on the number of processes (1 and 2 processes give
the same trajectory), and short answers are not up-weighted the way a mean of per-micro-batch means
would. FSDP averages gradients over ranks, so each rank scales its part by world_size.

Memory: llm-jp-4's vocabulary is 196,608, so the fp32 logits of one 4k sequence are ~3 GB. The
model's forward (`CausalLMForTraining`) projects only the positions that carry a label, a chunk of
`chunk_tokens` rows at a time, each chunk under activation checkpointing: the peak is one
[chunk x vocab] block, whatever the sequence length. Master weights and AdamW are fp32; on GPU the
forward/backward compute in bf16 with fp32 gradient reduction, on CPU everything is fp32.

Data order, learning rate and checkpoints are functions of the step only (plan.py), which makes
a resumed run continue exactly where the interrupted one would have been.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import atomic
from . import attention, memory
from ..errors import Interrupted, UserError
from ..model import resolve_model
from ..signals import StopRequest, exit_code, signal_name
from .batches import IGNORE_INDEX
from .checkpoint import CheckpointManager, check_free_space, checkpoint_bytes
from .distributed import (DistEnv, all_reduce_max, all_reduce_sum, barrier, broadcast_object, init_distributed,
                          launched_world_size, should_spawn, spawn_workers, world_plan)
from .lora import LoraSpec, attach_lora, complete_state_dict, spec_from_params
from ..gpu import versions, versions_line
from .monitor import Monitor, check_wandb, truncate_metrics
from .perf import StepMeter, flops_per_token, summarize
from .plan import DataOrder, Deadline, LRSchedule, TrainPlan, check_layout, make_deadline, make_plan
from .publish import PROVENANCE, WEIGHT_PREFIX, publish_hf_model

RESULT_FILE = "train_result.json"
COMPILE_BACKEND = "inductor"  # torch.compile backend of `compile_layers` (tests trace with "aot_eager")


# ------------------------------------------------------------------ the model: FSDP2 + chunked head
def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # The projection runs in the compute dtype (bf16 on GPU); log-softmax in fp32 for accuracy.
    logits = F.linear(hidden, weight).float()
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                   chunk_tokens: int = 1024) -> torch.Tensor:
    """log p(labels[b, t] | prefix) for every labelled position, 0 elsewhere; shape of `labels`, fp32.

    Args:
        hidden: [B, T, H] final hidden states (after the last norm).
        weight: [V, H] output projection (lm_head.weight).
        labels: [B, T] already-shifted targets, -100 where there is no loss.
        chunk_tokens: rows projected at once; bounds the [rows x V] logits block.
    """
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = labels.reshape(-1)
    idx = (flat_y != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    out = torch.zeros(flat_y.shape, dtype=torch.float32, device=hidden.device)
    if idx.numel() == 0:
        # Keep the graph connected so backward still reaches every parameter (FSDP needs that).
        return out.reshape(labels.shape) + 0.0 * hidden.sum() + 0.0 * weight.sum()
    h_sel, y_sel = flat_h.index_select(0, idx), flat_y.index_select(0, idx)
    pieces = []
    for start in range(0, idx.numel(), chunk_tokens):
        h_c, y_c = h_sel[start:start + chunk_tokens], y_sel[start:start + chunk_tokens]
        if torch.is_grad_enabled() and (h_c.requires_grad or weight.requires_grad):
            pieces.append(checkpoint(_chunk_logprobs, h_c, weight, y_c, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h_c, weight, y_c))
    return out.index_put((idx,), torch.cat(pieces)).reshape(labels.shape)


class CausalLMForTraining(nn.Module):
    """An HF causal LM whose forward returns log p(label) per position via the chunked head."""

    def __init__(self, lm: nn.Module, chunk_tokens: int = 1024):
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def forward(self, labels: torch.Tensor, **model_inputs: Any) -> torch.Tensor:
        """[B, T] fp32 log-probs of `labels` (0 where labels == -100)."""
        out = self.lm.model(use_cache=False, **model_inputs)
        hidden = out.last_hidden_state
        lp = token_logprobs(hidden, self.lm.lm_head.weight, labels.reshape(hidden.shape[:2]),
                            self.chunk_tokens)
        # A fresh tensor, not a view: FSDP2 hooks backward onto the root's output, and an
        # in-place op on a view of it would silently skip that hook.
        return lp.reshape(labels.shape).clone()


@dataclass(frozen=True)
class ModelSetup:
    """What was loaded and how: attention kernel, compute dtype, sizes."""

    model_dir: Path
    attn_implementation: str
    compute_dtype: torch.dtype
    n_params: int
    max_position_embeddings: int
    vocab_size: int
    n_trainable: int = 0  # < n_params with LoRA (adapters only)
    attention: str = ""   # the kernel in words, for logs and records


def resolve_precision(precision: str, env: DistEnv) -> torch.dtype:
    """auto = bf16 compute on GPU, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if env.is_cuda else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]


def resolve_attention(requested: str, env: DistEnv) -> str:
    """The transformers attention implementation for a requested `attn_implementation`.

    auto / varlen: per-document attention over the batch's `cu_seqlens` (attention.py): torch's
    FlashAttention varlen kernel on GPU in bf16, per-document SDPA elsewhere; no T x T mask.
    sdpa / eager: transformers' own kernels with the dense block-diagonal mask (the reference).
    """
    if requested in ("auto", "varlen"):
        return attention.register()
    return requested


def per_document(attn: str) -> bool:
    """True when batches must carry cu_seqlens (per-document attention), False for a dense block mask."""
    return attn == attention.IMPLEMENTATION


def row_multiple(attn: str, env: DistEnv) -> int:
    """Round padded row lengths up to this: 128 for a dense mask on CUDA, else 8.

    With a mask, torch 2.13's cuDNN SDPA backward can return NaN on H200 when the sequence length
    is 64 modulo 128 (pytorch#196678); multiples of 128 never are. Per-document attention takes no
    mask and is not affected.
    """
    return 128 if env.is_cuda and not per_document(attn) else 8


def attention_name(attn: str) -> str:
    """The user-facing name of a resolved implementation (varlen for the kit's per-document one)."""
    return "varlen" if per_document(attn) else attn


def read_config(model_dir: Path):
    """The model's transformers config, with a one-sentence error for a dir that is not a model."""
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: no config.json (give an HF model directory, 'tiny', or a run dir)")
    try:
        return AutoConfig.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises many types for unreadable configs
        raise UserError(f"{model_dir}/config.json: cannot be read as a transformers config ({exc})") from None


def pad_token_id(model_dir: Path) -> int | None:
    """The model's pad token id from config.json (None when it has none)."""
    pad = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("pad_token_id")
    return int(pad) if isinstance(pad, int) else None


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no *.safetensors weights (convert the checkpoint to safetensors)")
    return files


def load_full_state_dict(model_dir: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """All weights of an HF model dir, cast to `dtype` (rank 0 only; others pass {})."""
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for f in _weight_files(model_dir):
        for k, v in load_file(str(f)).items():
            sd[k] = v.to(dtype)
    return sd


def reinit_rotary_buffers(model: nn.Module) -> None:
    """Recompute RoPE's non-persistent buffers (not in the checkpoint; garbage after to_empty())."""
    for mod in model.modules():
        if hasattr(mod, "inv_freq") and hasattr(mod, "config"):
            fresh = type(mod)(config=mod.config)
            for name, buf in fresh.named_buffers(recurse=False):
                getattr(mod, name).copy_(buf.to(getattr(mod, name).device))
            if hasattr(fresh, "attention_scaling"):
                mod.attention_scaling = fresh.attention_scaling


def load_for_training(model_dir: Path, env: DistEnv, *, precision: str = "auto",
                      attn_implementation: str = "auto", activation_checkpointing: bool = False,
                      checkpoint_every: int = 1, compile_layers: bool = False, chunk_tokens: int = 1024,
                      lora: LoraSpec | None = None, frozen: bool = False) -> tuple[CausalLMForTraining, ModelSetup]:
    """Build the FSDP2-sharded training model from an HF model dir (collective: all ranks call).

    The model is built on the meta device on every rank, each decoder layer and then the root are
    wrapped with `fully_shard`, storage is allocated only for each rank's shard, and rank 0 streams
    the safetensors weights to the others: an 8B model never sits whole in every rank's memory.

    Args:
        activation_checkpointing: recompute decoder layers in backward instead of keeping their
            activations; `checkpoint_every` = n recomputes every n-th layer only (1: all of them).
        compile_layers: `torch.compile` each decoder layer (before sharding, as torchtitan does).
        lora: add LoRA adapters (inside the FSDP unit of the linear they adapt), freeze the rest.
        frozen: a model that is never trained (DPO's live reference): no gradients, weights stored
            in the compute dtype, eval mode.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    config = read_config(model_dir)
    attn = resolve_attention(attn_implementation, env)
    compute_dtype = resolve_precision(precision, env)
    config.use_cache = False
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    if not (hasattr(lm, "model") and hasattr(lm.model, "layers") and hasattr(lm, "lm_head")):
        raise UserError(f"{model_dir}: {type(lm).__name__} is not a LLaMA-format decoder "
                        "(expected .model.layers and .lm_head)")
    if activation_checkpointing and not frozen:
        # Recompute decoder layers in backward: activations drop from O(layers) to O(layers / n).
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                           every_n_layers=max(1, int(checkpoint_every)))
    if lora is not None:
        # Before fully_shard: each adapter joins the FSDP unit of the frozen linear it adapts.
        attach_lora(lm, lora, frozen_dtype=compute_dtype)
    if frozen:
        for p in lm.parameters():
            p.requires_grad_(False)
            p.data = p.data.to(compute_dtype)  # never updated: no fp32 master copy needed
    if compile_layers:
        for layer in lm.model.layers:
            # Per block, before fully_shard (torchtitan's order): FSDP's hooks stay outside the graphs.
            layer.compile(backend=COMPILE_BACKEND)
    model = CausalLMForTraining(lm, chunk_tokens)
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) \
        if compute_dtype != torch.float32 else MixedPrecisionPolicy()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if not tied:
        # Its own unit: the 0.8B-parameter embedding of llm-jp is gathered only around its use.
        fully_shard(lm.model.embed_tokens, mp_policy=mp)
    for layer in lm.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)  # root: final norm + lm_head (+ embedding if tied)
    model.to_empty(device=env.device)
    with torch.no_grad():
        reinit_rotary_buffers(model)
    full = load_full_state_dict(model_dir, compute_dtype if frozen else torch.float32) if env.is_main else {}
    if env.is_main:
        if tied:
            full.pop("lm_head.weight", None)
        full = {WEIGHT_PREFIX + k: v for k, v in full.items()}
        if lora is not None:  # base weights under peft's names + the adapters' initial values
            full = complete_state_dict(model, full, lora)
    result = set_model_state_dict(model, full, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=True, strict=not tied))
    missing = [k for k in (result.missing_keys or []) if not (tied and k.endswith("lm_head.weight"))]
    if missing or result.unexpected_keys:
        raise UserError(f"{model_dir}: weights do not match the config (missing {missing[:3]}, "
                        f"unexpected {list(result.unexpected_keys)[:3]})")
    del full
    model.train(not frozen)
    n_params = sum(p.numel() for p in model.parameters())
    setup = ModelSetup(model_dir, attention_name(attn), compute_dtype, n_params,
                       int(getattr(config, "max_position_embeddings", 0) or 0), int(config.vocab_size),
                       sum(p.numel() for p in model.parameters() if p.requires_grad),
                       attention=attention.describe(env.device, compute_dtype) if per_document(attn)
                       else f"{attn} with a dense block-diagonal mask")
    return model, setup


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm weights and biases are not decayed, as in Megatron)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused CUDA kernel updates all parameters in a few launches instead of a loop of small ops.
    fused = any(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-8,
                             fused=fused or None)


# ------------------------------------------------------------------ the loop
class Task(Protocol):
    """What the loop needs from a stage's objective (SFT: sft.SFTTask, DPO: dpo.DPOTask).

    A batch exposes `weight` (its share of the loss normaliser: labelled tokens, or pairs) and
    `tokens` (real tokens, for throughput); see batches.py.
    """

    def batch(self, items: Sequence[Any], device) -> Any:
        """Dataset items -> one micro-batch on `device`."""

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss SUM over the batch, extra metric SUMS); the loop divides both by the global weight.

        Extras (e.g. DPO reward accuracy) appear in each step record and, prefixed `val_`, in
        validation records; return the same keys for every batch.
        """

    def blank(self, item: Any) -> Any:
        """A copy of `item` that contributes nothing (pads an uneven validation shard)."""


@dataclass(frozen=True)
class LoopSettings:
    """Everything the loop needs from the params, already resolved."""

    total_steps: int
    global_batch: int
    micro_batch: int
    grad_clip: float
    val_interval: int
    save_interval: int
    deadline: Deadline
    delete_optimizer_state: bool = False
    meter: Any = None  # perf.StepMeter: peak memory and MFU per step (None: not measured)


@dataclass
class LoopResult:
    """How a call to `train_loop` ended (rank 0 writes it as train_result.json)."""

    status: str                       # completed | deadline | interrupted (a stop signal)
    step: int
    total_steps: int
    resumed_from: int | None
    final_loss: float | None
    tokens_seen: int
    train_seconds: float
    val_history: list[list[float]] = field(default_factory=list)  # [[step, val_loss], ...]
    best_step: int | None = None
    best_val_loss: float | None = None
    stop_signal: str | None = None    # e.g. "SIGTERM" when a signal asked the loop to stop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(task: Task, model, dataset, env: DistEnv, micro_batch: int) -> dict[str, float] | None:
    """Normalised loss (and extra metrics) over the whole dataset, split across ranks."""
    n = len(dataset)
    if n == 0:
        return None
    per_pass = micro_batch * env.world_size
    n_passes = math.ceil(n / per_pass)  # equal on every rank: FSDP collectives must pair up
    num, weight, extras = 0.0, 0.0, {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b in range(n_passes):
            start = b * per_pass + env.rank * micro_batch
            items = [dataset[i] if i < n else task.blank(dataset[0]) for i in range(start, start + micro_batch)]
            batch = task.batch(items, env.device)
            loss_sum, extra = task.loss(model, batch)
            num += float(loss_sum)
            weight += batch.weight
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + float(v)
    model.train(was_training)
    keys = sorted(extras)
    sums = all_reduce_sum([num, weight] + [extras[k] for k in keys], env)
    if sums[1] <= 0:
        return None
    out = {"val_loss": sums[0] / sums[1]}
    out.update({f"val_{k}": v / sums[1] for k, v in zip(keys, sums[2:])})
    out["val_weight"] = sums[1]
    return out


def _grad_norm(model, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# Why the loop stops early, agreed by all ranks (all_reduce_max: the most severe reason wins).
_GO, _DEADLINE, _SIGNAL, _FAILED = 0.0, 1.0, 2.0, 3.0


def train_loop(task: Task, model, optimizer, schedule: LRSchedule, train_ds, dev_ds, order: DataOrder,
               ckpt: CheckpointManager, monitor: Monitor, env: DistEnv, s: LoopSettings,
               stop: StopRequest | None = None) -> LoopResult:
    """Train to `s.total_steps` (or the deadline, or a stop signal), resuming from the latest complete checkpoint.

    Between steps every rank contributes its reason to stop (the deadline is near, a signal
    arrived on this rank, rank 0 could not write its records) and all act on the most severe one:
    a signal on any one rank stops all of them after the same step, with one checkpoint.
    """
    step, tokens_seen, train_seconds, resumed_from = 0, 0, 0.0, None
    val_history: list[list[float]] = []
    latest = ckpt.latest()
    if latest is not None:
        done = latest.step >= s.total_steps
        if not done and not latest.has_optimizer:
            raise UserError(f"{latest.path}: its optimizer state was deleted, so training cannot "
                            "continue from it (start a new run_name, or train from its weights)")
        state = ckpt.load(latest, model, None if done else optimizer)
        step, resumed_from = latest.step, latest.step
        tokens_seen = int(state.get("tokens_seen", 0))
        train_seconds = float(state.get("train_seconds", 0.0))
        val_history = [list(v) for v in state.get("val_history", [])]
        monitor.print(f"resumed from {latest.path.name} (step {step}/{s.total_steps})")
        if monitor.bar is not None:
            monitor.bar.update(step - monitor.bar.n)
    last_loss = None
    if step == 0 and dev_ds is not None:
        val = evaluate(task, model, dev_ds, env, s.micro_batch)
        if val is not None:
            val_history.append([0, val["val_loss"]])
            monitor.validation({"step": 0, **val})
    accum = s.global_batch // (s.micro_batch * env.world_size)
    status, step_ema, save_cost, last_saved = "completed", None, 0.0, step
    first_step, stop_name = step, None
    t_attempt = time.time()

    def save(at: int, val_loss: float | None) -> None:
        nonlocal save_cost, last_saved
        t = time.time()
        ckpt.save(at, model, optimizer, {
            "tokens_seen": tokens_seen, "train_seconds": train_seconds, "val_loss": val_loss,
            "val_history": val_history, "schedule": schedule.state_dict(),
            "data": {"seed": order.seed, "global_batch": order.global_batch, "n_items": order.n_items,
                     "next_step": at + 1}})
        save_cost, last_saved = max(save_cost, time.time() - t), at

    while step < s.total_steps:
        # Stop early if one more step plus a checkpoint would not fit before the deadline.
        need = (step_ema or 0.0) + save_cost
        reason = _FAILED if monitor.failed is not None else _SIGNAL if stop is not None and stop.requested \
            else _DEADLINE if s.deadline.remaining() < need else _GO
        reason = all_reduce_max(reason, env)
        if reason == _FAILED:
            message = broadcast_object(str(monitor.failed) if monitor.failed is not None else None, env)
            raise UserError(f"{message} (training stopped after step {step}; the last checkpoint is "
                            f"step {last_saved})")
        if reason == _SIGNAL:  # the signal may have reached another rank only: agree on its name
            status, stop_name = "interrupted", signal_name(int(all_reduce_max(float(stop.signum or 0), env)))
            break
        if reason == _DEADLINE:
            status = "deadline"
            break
        step += 1
        t0 = time.time()
        batches = [task.batch([train_ds[int(i)] for i in idx], env.device)
                   for idx in order.rank_micro_batches(step, env.rank, env.world_size, s.micro_batch)]
        assert len(batches) == accum
        # The normaliser of the WHOLE global batch, known before the first backward.
        g_weight, g_tokens = all_reduce_sum([sum(b.weight for b in batches), sum(b.tokens for b in batches)], env)
        scale = env.world_size / max(g_weight, 1.0)  # FSDP averages gradients over ranks
        num = torch.zeros((), dtype=torch.float64, device=env.device)
        extra_sums: dict[str, float] = {}
        for i, batch in enumerate(batches):
            # Reduce-scatter gradients once per step, on the last micro-batch only.
            model.set_requires_gradient_sync(i == len(batches) - 1)
            loss_sum, extra = task.loss(model, batch)
            (loss_sum * scale).backward()
            num += loss_sum.detach().double()
            for k, v in extra.items():
                extra_sums[k] = extra_sums.get(k, 0.0) + float(v)
        grad_norm = _grad_norm(model, s.grad_clip)
        lr = schedule.apply(optimizer, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        keys = sorted(extra_sums)  # a task returns the same keys on every rank
        sums = all_reduce_sum([float(num)] + [extra_sums[k] for k in keys], env)
        loss = sums[0] / max(g_weight, 1.0)
        extras = {k: v / max(g_weight, 1.0) for k, v in zip(keys, sums[1:])}
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            raise UserError(f"step {step}: the loss became {loss} (grad norm {grad_norm}); "
                            "lower lr or check the data (no checkpoint was written for this step)")
        dt = time.time() - t0
        step_ema = dt if step_ema is None else 0.8 * step_ema + 0.2 * dt
        train_seconds += dt
        tokens_seen += int(g_tokens)
        last_loss = loss
        monitor.step({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_s": g_tokens / dt if dt > 0 else 0.0, "tokens_seen": tokens_seen,
                      "loss_tokens": int(g_weight), "epoch": round(order.epoch_at(step), 4),
                      "step_seconds": round(dt, 4), **extras,
                      **(s.meter.record(g_tokens, dt) if s.meter is not None else {})})
        is_last = step == s.total_steps
        save_now = is_last or (s.save_interval > 0 and step % s.save_interval == 0)
        val_loss = None
        if dev_ds is not None and (save_now or (s.val_interval > 0 and step % s.val_interval == 0)):
            val = evaluate(task, model, dev_ds, env, s.micro_batch)
            if val is not None:
                val_loss = val["val_loss"]
                val_history.append([step, val_loss])
                monitor.validation({"step": step, **val})
        if save_now:
            save(step, val_loss)
    if status != "completed":
        # One checkpoint of the last finished step (val_loss None, as for any unscheduled save:
        # it never competes for "best", so the published weights match an uninterrupted run).
        why = f"deadline: {s.deadline.describe()}" if status == "deadline" else f"{stop_name} received"
        if last_saved != step:
            monitor.print(f"{why}; saving step {step} and stopping")
            save(step, None)
        elif step == first_step:
            monitor.print(f"{why}; stopping before the first step of this attempt (nothing new to save)")
        else:
            monitor.print(f"{why}; step {step} is already saved, stopping")
    if status == "completed" and s.delete_optimizer_state:
        n = ckpt.drop_optimizer_states()
        monitor.print(f"deleted the optimizer state of {n} checkpoint(s) (weights kept)")
    best = min(val_history, key=lambda v: (v[1], -v[0])) if val_history else None
    monitor.print(f"{status} at step {step}/{s.total_steps} after {time.time() - t_attempt:.0f} s")
    return LoopResult(status=status, step=step, total_steps=s.total_steps, resumed_from=resumed_from,
                      final_loss=last_loss, tokens_seen=tokens_seen, train_seconds=round(train_seconds, 3),
                      val_history=val_history, best_step=int(best[0]) if best else None,
                      best_val_loss=best[1] if best else None,
                      stop_signal=stop_name)


# ------------------------------------------------------------------ one training attempt
def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's train_result.json (None before the first attempt ended)."""
    path = Path(run_dir) / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def result_written_since(run_dir: str | Path, t0: float) -> bool:
    """True when the run's train_result.json was written at or after `t0` (by the launch that began then)."""
    path = Path(run_dir) / RESULT_FILE
    return path.is_file() and path.stat().st_mtime >= t0


def on_main_first(env: DistEnv, fn: Callable[[], Any]):
    """Run `fn` on rank 0, then on the others (so caches are built once); a failure stops every rank."""
    result = on_main(env, fn)
    barrier(env)
    if not env.is_main:
        result = fn()
    return result


@dataclass
class Setup:
    """One rank's view of what to train before the model is loaded: env, model dir, attention."""

    env: DistEnv
    model_dir: Path
    attn: str
    pad_id: int | None


def setup(cfg, env: DistEnv | None = None, model_dir: Path | None = None) -> Setup:
    """Process group, model dir and attention kernel, checked on every rank before any data or weights."""
    env = env or init_distributed()
    model_dir = Path(model_dir) if model_dir else on_main_first(env, lambda: resolve_model(cfg.model))
    check_layout(cfg, env.world_size, getattr(read_config(model_dir), "max_position_embeddings", None))
    check_wandb(cfg.wandb)  # on every rank: a failure on one rank only would hang the others
    attn = resolve_attention(cfg.attn_implementation, env)
    if cfg.stage == "sft" and row_multiple(attn, env) == 128 and cfg.max_seq_length % 128 == 64:
        # Packed SFT rows are exactly max_seq_length long (DPO rows are padded to 128 instead).
        raise UserError(f"max_seq_length {cfg.max_seq_length} with attn_implementation {cfg.attn_implementation} "
                        "on a GPU: cuDNN's masked attention backward can return NaN at lengths of 64 modulo 128 "
                        "(pytorch#196678) (use attn_implementation: auto, or a multiple of 128)")
    return Setup(env, model_dir, attn, pad_token_id(model_dir))


def on_main(env: DistEnv, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only (its result there, None elsewhere); its failure (one sentence) stops
    every rank, none hangs."""
    result, error, exc_main = None, None, None
    if env.is_main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below; the others must not hang
            exc_main = exc
            error = str(exc) if isinstance(exc, UserError) else f"rank 0 failed: {exc!r}"
    error = broadcast_object(error, env)
    if exc_main is not None:
        raise exc_main
    if error:
        raise UserError(error)
    return result


def train(task: Task, cfg, run, s: Setup, train_ds, dev_ds,
          data_report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (resuming if the run has checkpoints), publish when complete; returns the result record.

    Collective: every rank calls it. SIGTERM / SIGINT / SIGUSR1 during the attempt stop it after
    the current step with one checkpoint (status "interrupted", `stop_signal` set); a second
    signal stops at once (tunekit.signals).
    """
    env, model_dir = s.env, s.model_dir
    plan = make_plan(cfg, env.world_size, len(train_ds), len(dev_ds) if dev_ds is not None else 0)
    dev_ds = dev_ds if dev_ds is not None and len(dev_ds) else None
    t_start = time.time()
    deadline = make_deadline(cfg.max_train_minutes, cfg.walltime_margin_minutes, start=t_start)
    on_main(env, run.hold)  # one writer per run: refused here if another process writes it
    ckpt = CheckpointManager(run.path("checkpoints"), env, keep_top_k=cfg.keep_top_k)
    latest = ckpt.latest()
    if env.is_main:
        # Records after the checkpoint (all of them without one) are redone; keeping them would
        # duplicate steps and validations.
        truncate_metrics(run.dir, latest.step if latest is not None else -1)
    barrier(env)
    with StopRequest() as stop:
        lora = spec_from_params(cfg)  # None: full fine-tuning
        gpu_versions = versions() if env.is_cuda else None
        if gpu_versions and env.is_main:
            print(f"[gpu] {versions_line(gpu_versions)}", flush=True)
            # A planning check before 8B weights load: the estimate next to this GPU's memory.
            est = memory.for_params(cfg, read_config(model_dir), env.world_size, plan.grad_accum)
            print(memory.plan_line(est, gpu_versions.get("gpu_memory_gb")), flush=True)
        model, loaded = load_for_training(model_dir, env, precision=cfg.precision,
                                          attn_implementation=cfg.attn_implementation,
                                          activation_checkpointing=cfg.activation_checkpointing,
                                          checkpoint_every=cfg.activation_checkpointing_every,
                                          compile_layers=cfg.compile_layers, chunk_tokens=cfg.loss_chunk_tokens,
                                          lora=lora)
        if latest is None or latest.step < plan.total_steps:
            need = checkpoint_bytes(model, env.world_size)
            on_main(env, lambda: check_free_space(ckpt.root, need))
        optimizer = build_optimizer(model, cfg)
        schedule = LRSchedule(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.constant_steps, plan.total_steps)
        order = DataOrder(plan.n_train, cfg.global_batch_size, cfg.seed)
        monitor = Monitor(run, is_main=env.is_main, total_steps=plan.total_steps, desc=cfg.stage,
                          wandb_mode=cfg.wandb, wandb_project=cfg.wandb_project, config=cfg.to_dict())
        if lora is not None:
            monitor.print(f"LoRA rank {lora.rank} (alpha {lora.alpha:g}) on {','.join(lora.targets)}: "
                          f"{loaded.n_trainable / 1e6:.3f}M trainable parameters, base frozen")
        monitor.print(f"{loaded.n_params / 1e6:.2f}M parameters, {env.world_size} process(es) on "
                      f"{env.device.type}, {loaded.attention} attention, compute "
                      f"{str(loaded.compute_dtype).replace('torch.', '')}; {plan.total_steps} steps x "
                      f"{cfg.global_batch_size} sequences of {cfg.max_seq_length} tokens "
                      f"({plan.grad_accum} micro-batch(es) of {cfg.micro_batch_size} per process); "
                      f"{deadline.describe()}")
        settings = LoopSettings(total_steps=plan.total_steps, global_batch=cfg.global_batch_size,
                                micro_batch=cfg.micro_batch_size, grad_clip=cfg.grad_clip,
                                val_interval=cfg.val_interval, save_interval=cfg.save_interval,
                                deadline=deadline, delete_optimizer_state=cfg.delete_optimizer_state,
                                meter=StepMeter(env.device,
                                                flops_per_token(read_config(model_dir), cfg.max_seq_length),
                                                env.world_size))
        try:
            loop = train_loop(task, model, optimizer, schedule, train_ds, dev_ds, order, ckpt, monitor, env,
                              settings, stop=stop)
        finally:
            monitor.close()
        published, published_step = None, None
        if loop.status == "completed":
            published, published_step = publish(cfg, run, env, model, ckpt, model_dir, loop.step)
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
            "attn_implementation": loaded.attn_implementation,
            "compute_dtype": str(loaded.compute_dtype).replace("torch.", ""), "n_params": loaded.n_params,
            "plan": plan.to_dict(), "data": data_report or {}, "model_dir": str(model_dir),
            "hf_model": str(published) if published else None, "published_step": published_step,
            "peft": "lora" if lora is not None else "none", "trainable_params": loaded.n_trainable,
            "lora_adapter": str(run.path("lora_adapter")) if published and lora is not None else None,
            "attempt_seconds": round(time.time() - t_start, 1),
            # A stop that arrived after the last step still ends the attempt early (the notebook
            # stops, the worker exits non-zero), although the run itself is complete.
            "stop_signal": loop.stop_signal or _agreed_signal(stop, env),
            **summarize(train_recs), "gpu": gpu_versions,
        }
        if env.is_main:
            atomic.write_json(run.path(RESULT_FILE), result)
        barrier(env)
    return result


def _agreed_signal(stop: StopRequest, env: DistEnv) -> str | None:
    """The name of a stop signal any rank received (collective), None if none did."""
    signum = int(all_reduce_max(float(stop.signum or 0), env))
    return signal_name(signum) if signum else None


def raise_if_stopped(result: dict[str, Any], signal_name: str | None = None) -> None:
    """In a notebook: end the training cell with one sentence when a stop signal ended the attempt."""
    name = signal_name or result.get("stop_signal")
    if not name:
        return
    import signal as _signal

    code = exit_code(getattr(_signal, name, _signal.SIGINT))
    step, total = result.get("step"), result.get("total_steps")
    if result.get("status") == "completed":
        raise Interrupted(f"{name} received while training finished: all {total} steps are done and "
                          "published, the rest of the notebook was not run (run it again to finish it)", code)
    if step == result.get("resumed_from") or not step:
        raise Interrupted(f"{name} received: training stopped before its first step, nothing new to save "
                          f"(status interrupted); run the notebook again with the same run_name to continue", code)
    raise Interrupted(f"{name} received: training stopped after step {step}/{total} with a checkpoint "
                      "(status interrupted); run the notebook again with the same run_name to resume", code)


def _already_published(out: Path, step: int, mode: str) -> bool:
    try:
        prov = json.loads((out / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return prov.get("step") == step and prov.get("publish") == mode


def publish(cfg, run, env: DistEnv, model, ckpt: CheckpointManager, model_dir: Path,
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


# ------------------------------------------------------------------ from the notebook
@dataclass
class Prepared:
    """What a training notebook checks and shows before training: model dir, data, report, plan."""

    model_dir: Path
    train: Any
    dev: Any
    report: dict[str, Any]
    plan: TrainPlan
    spawn: bool  # True: run_prepared launches worker processes


def planned_world_size(cfg) -> tuple[int, bool]:
    """(processes training will use, whether the notebook launches them) for this kernel and cfg."""
    if should_spawn(cfg.nproc_per_node):
        return world_plan(cfg.nproc_per_node)[0], True
    return launched_world_size(), False


def prepare(cfg, build_data: Callable[[Path], tuple[Any, Any, dict[str, Any]]]) -> Prepared:
    """Resolve the model, check the layout, build the data and the plan - in the notebook, before training."""
    world, spawn = planned_world_size(cfg)
    model_dir = resolve_model(cfg.model)
    check_layout(cfg, world, getattr(read_config(model_dir), "max_position_embeddings", None))
    train_ds, dev_ds, report = build_data(model_dir)
    plan = make_plan(cfg, world, len(train_ds), len(dev_ds))
    return Prepared(model_dir, train_ds, dev_ds, report, plan, spawn)


def run_prepared(prep: Prepared, cfg, run, train_fn: Callable[..., dict]) -> dict[str, Any]:
    """Train in this kernel, or launch `tunekit train <stage>` workers and wait for their train_result.json."""
    if prep.spawn:
        t0 = time.time()
        stopped = spawn_workers(cfg.stage, run.dir, cfg.nproc_per_node, lambda t: result_written_since(run.dir, t))
        if stopped:  # this kernel got the signal and passed it on to the workers
            if not result_written_since(run.dir, t0):
                import signal as _signal

                raise Interrupted(f"{stopped} received before training began; nothing new was saved (run "
                                  "the notebook again to start or resume)",
                                  exit_code(getattr(_signal, stopped, _signal.SIGINT)))
            raise_if_stopped(read_result(run.dir) or {}, stopped)
        result = read_result(run.dir)
        if result is None:
            raise UserError(f"{run.dir}: the training processes ended without a {RESULT_FILE}")
        raise_if_stopped(result)
        return result
    result = train_fn(cfg, run, datasets=(prep.train, prep.dev, prep.report), model_dir=prep.model_dir)
    raise_if_stopped(result)
    return result
