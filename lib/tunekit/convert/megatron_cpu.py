"""Megatron-core 0.16.1 on a CPU-only machine: the one place the kit bends it, used by conversion only.

Megatron-core is the library that defines the NeMo checkpoint format (`dist_checkpointing`,
torch_dist) and the GPT model NeMo trains, so conversion reads NeMo weights with it and verifies
every conversion with its GPTModel. It assumes a GPU in a few places; on CPU (ABCI rt_HC nodes,
laptops, CI) three shims make the parts we use work, found by running them here:

1. `torch.cuda.current_device()` must answer "cpu": parameter creation with
   `use_cpu_initialization=True` and the sharded state dict ask for "the current device".
2. `torch.cuda.synchronize()` must be a no-op: checkpoint save/load call it unconditionally.
3. The tensor-parallel RNG tracker's `fork()` must be a null context (it swaps CUDA RNG states):
   Megatron's own *inference* tracker does exactly that, so we install it instead of patching.

The forward pass also needs an explicit causal mask (the default one is built on "cuda"); see
`causal_mask`. Megatron's optimizer, DDP and pipeline schedules hard-code CUDA and are not used.

Everything is scoped: `megatron_on_cpu()` applies the shims, creates a single-process gloo group
and Megatron's parallel state if none exists, and undoes all of it on exit, so the rest of the
process (and other tests in it) never sees a patched torch.cuda. It also keeps Megatron's import
time warnings (TransformerEngine/Apex missing, deprecations) out of the user's output.

With the logits check on, conversion starts the import on a background thread before it writes
(`prefetch_megatron`), so that its seconds overlap the write; `import_megatron` waits for it and,
if it failed, imports again on its own thread (where a real error is then raised). The
background thread stays quiet through two kept warning filters instead of `quiet()`, whose
`catch_warnings` is not thread-safe.

Megatron's own checkpoint *writer* spawns a helper process (multiprocessing "spawn", which re-imports
`__main__`): scripts that save with it must guard their entry point (`if __name__ == "__main__":`).
The kit writes NeMo weights with torch.distributed.checkpoint directly (see `torch_dist.py`), so
conversion itself never spawns.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from typing import Iterator

import torch

_LOCK = threading.RLock()
_DEPTH = 0  # nesting depth of megatron_on_cpu() in this process


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Megatron's warnings and info logs (TE/Apex missing, deprecations) inside the block."""
    loggers = [logging.getLogger(n) for n in ("megatron", "megatron.core")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _import_pieces() -> None:
    from megatron.core import dist_checkpointing, parallel_state  # noqa: F401
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor  # noqa: F401
    from megatron.core.models.gpt import GPTModel  # noqa: F401
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: F401
    from megatron.core.tensor_parallel import random as _random  # noqa: F401
    from megatron.core.transformer import TransformerConfig  # noqa: F401


def import_megatron():
    """Import the Megatron-core pieces conversion uses, without their import-time warnings (after
    waiting for a `prefetch_megatron` import under way; if that one failed, this one retries)."""
    _PREFETCH.join()
    with quiet():
        _import_pieces()
    import megatron.core as mcore

    return mcore


def _imported() -> bool:
    return "megatron.core.transformer" in sys.modules


class _Prefetch:
    """At most one background import of Megatron-core per process; see `prefetch_megatron`."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.waited_s = 0.0   # how long the last join waited for it

    def start(self) -> bool:
        self.waited_s = 0.0   # per conversion: a kernel that converts twice imports once
        if _imported() or (self.thread and self.thread.is_alive()):
            return False
        # Not `quiet()` in the thread: catch_warnings saves and restores the process-wide filter
        # list, so a background block would race the main thread's own (a restore in the wrong
        # order leaves every warning ignored for good). These two filters are added here, on the
        # calling thread, and kept: Megatron's own warnings, and torch's deprecation of the
        # torch.jit API Megatron still calls at import.
        warnings.filterwarnings("ignore", module=r"megatron(\.|$)")
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated",
                                category=DeprecationWarning)
        self.error = None
        self.thread = threading.Thread(target=self._run, name="tunekit-megatron-import", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        # Logger levels are per logger, and only Megatron logs to these: safe to set from here.
        loggers = [logging.getLogger(n) for n in ("megatron", "megatron.core")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            _import_pieces()
        except BaseException as exc:   # kept for a look in a debugger; the next import retries
            self.error = exc
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)

    def join(self) -> None:
        """Wait for the background import. A failure there is not raised: the caller imports
        again on its own thread, which either succeeds (say the failure was an import race with
        this thread, which Python reports as a deadlock) or raises the real error where it is needed."""
        thread = self.thread
        if thread is None or thread is threading.current_thread():
            return
        t0 = time.perf_counter()
        thread.join()
        self.waited_s += time.perf_counter() - t0
        self.thread = None


_PREFETCH = _Prefetch()


def prefetch_megatron() -> bool:
    """Start importing Megatron-core in a background thread (~2-3 CPU-s here, more from a network
    file system), so that a conversion's write phase hides it; `import_megatron` (and so
    `megatron_on_cpu`) waits for it. Returns False when there is nothing to start."""
    return _PREFETCH.start()


def prefetch_wait_s() -> float:
    """Seconds the last wait for a background import took (0 when it was done in time)."""
    return round(_PREFETCH.waited_s, 3)


def causal_mask(seq_len: int) -> torch.Tensor:
    """Megatron's attention mask for one causal sequence: [1, 1, s, s], True = masked out."""
    return torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool), diagonal=1)[None, None]


@contextlib.contextmanager
def cpu_shims() -> Iterator[None]:
    """Apply the three shims (module doc) for the block, and undo them after.

    Only this; `megatron_on_cpu` adds the process group. Multi-process CPU jobs (the tests that
    write tensor/pipeline-parallel checkpoints with Megatron) use this after their own group init.
    """
    from megatron.core.tensor_parallel import random as mrandom

    saved = (torch.cuda.current_device, torch.cuda.synchronize)
    try:
        torch.cuda.current_device = lambda: "cpu"  # shim 1
        torch.cuda.synchronize = lambda *a, **k: None  # shim 2
        mrandom.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)  # shim 3
        with warnings.catch_warnings():
            # Megatron's runtime warnings only; the user's own stay visible.
            warnings.filterwarnings("ignore", module=r"megatron\..*")
            # torch.distributed.checkpoint deprecating the ShardedTensor Megatron reads through.
            warnings.filterwarnings("ignore", message="Please use DTensor instead",
                                    category=FutureWarning)
            yield
    finally:
        mrandom.initialize_rng_tracker(force_reset=True)
        torch.cuda.current_device, torch.cuda.synchronize = saved


@contextlib.contextmanager
def megatron_on_cpu() -> Iterator[None]:
    """Run the block with Megatron-core usable on CPU (shims + 1-process group); undone on exit.

    Re-entrant. If the process already has a torch.distributed group it must have world size 1
    (conversion is a single-process job); it is then reused and left as it was.
    """
    global _DEPTH
    from ..errors import UserError

    with _LOCK:
        import_megatron()
        from megatron.core import parallel_state

        dist = torch.distributed
        if _DEPTH > 0:
            _DEPTH += 1
            try:
                yield
            finally:
                _DEPTH -= 1
            return
        if dist.is_initialized() and dist.get_world_size() != 1:
            raise UserError(
                f"conversion: this process is part of a {dist.get_world_size()}-process group "
                "(run the conversion on its own, e.g. `tunekit convert ...`, not under torchrun)")
        own_group = not dist.is_initialized()
        own_state = not parallel_state.model_parallel_is_initialized()
        store = None
        _DEPTH = 1
        try:
            with cpu_shims():
                if own_group:
                    # A file store needs no free TCP port (shared nodes, parallel tests).
                    fd, store = tempfile.mkstemp(prefix="tunekit-pg-")
                    os.close(fd)
                    os.unlink(store)
                    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0,
                                            world_size=1)
                if own_state:
                    with quiet():
                        parallel_state.initialize_model_parallel(1, 1)
                try:
                    yield
                finally:
                    if own_state:
                        parallel_state.destroy_model_parallel()
                    if own_group and dist.is_initialized():
                        dist.destroy_process_group()
        finally:
            if store and os.path.exists(store):
                os.unlink(store)
            _DEPTH = 0
