"""`common.pt` of a torch_dist checkpoint: read safely, and told apart from the model.

Megatron-core stores everything that is not a sharded tensor in `common.pt` and merges it into
the result of every `dist_checkpointing.load`. For our own NeMo dirs that is `{}`. A NeMo training
checkpoint stores the whole Lightning checkpoint dict there: `epoch`, `global_step`,
`pytorch-lightning_version`, `loops`, `callbacks`, `lr_schedulers`, `hparams_name`,
`hyper_parameters` (with the model config as an OmegaConf `DictConfig`), `state_dict: {}`, ...

Two things follow, both handled here:
* Loading it with plain `torch.load` fails in the kit's environment: torch >= 2.6 only unpickles
  tensors and plain containers by default, and the kit does not install OmegaConf/Lightning.
  `SafeCommonLoad` reads it with an unpickler that restores plain data, tensors and a short
  allowlist exactly, and turns every other class into an inert `Opaque` placeholder: nothing from
  the file is imported or executed, and conversion never needs those values.
* The merged entries are not model weights: `model_entries` separates them by the weight prefix
  so verification ignores (and the conversion report lists) them instead of mangling their names.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

COMMON_FILE = "common.pt"
# Globals restored as themselves (what tensors and plain containers pickle to); anything else
# becomes an Opaque placeholder.
_ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"), ("builtins", "bytearray"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor_v3"), ("torch", "Size"), ("torch", "device"),
}


class Opaque:
    """An object of a class the kit does not load (e.g. OmegaConf's DictConfig): kept as data only."""

    qualname = "?"
    args: tuple = ()
    state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any):  # pickle's NEWOBJ calls cls.__new__(cls, *args)
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any):  # REDUCE calls cls(*args): nothing to run
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname} (not loaded)>"


def _opaque_class(module: str, name: str) -> type:
    return type(name, (Opaque,), {"qualname": f"{module}.{name}", "__module__": "tunekit.convert.common_state"})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        if module == "torch" and name in ("float32", "bfloat16", "float16", "int64", "int32", "bool"):
            return getattr(torch, name)
        return _opaque_class(module, name)


class _PickleModule:
    """The `pickle_module` torch.load accepts: our Unpickler, the standard rest."""

    Unpickler = _Unpickler
    load = staticmethod(lambda f, **kw: _Unpickler(f, **kw).load())
    __name__ = "tunekit_safe_pickle"


def read_common(weights_dir: str | os.PathLike) -> dict[str, Any]:
    """`common.pt` of a torch_dist checkpoint, read safely (see module doc); FileNotFoundError if absent."""
    path = Path(weights_dir) / COMMON_FILE
    data = path.read_bytes()
    obj = torch.load(io.BytesIO(data), map_location="cpu", pickle_module=_PickleModule, weights_only=False)
    return obj if isinstance(obj, dict) else {"<common.pt>": obj}


def safe_common_strategy():
    """A Megatron-core LoadCommonStrategy that reads `common.pt` with `read_common`."""
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy

    class SafeCommonLoad(TorchCommonLoadStrategy):
        def load_common(self, checkpoint_dir):
            try:
                return read_common(checkpoint_dir)
            except FileNotFoundError as exc:  # the same error Megatron's own strategy raises
                raise CheckpointingException(
                    f"Common file {os.path.join(checkpoint_dir, COMMON_FILE)} does not exist") from exc

    return SafeCommonLoad()


def model_entries(state: dict[str, Any], prefix: str) -> tuple[dict[str, Any], list[str]]:
    """(entries under the weight prefix with the prefix removed, sorted names of all other entries)."""
    if not prefix:  # Megatron-LM style keys: only the common.pt entries are "other"
        others = sorted(k for k in state if k in _TRAINER_KEYS or not isinstance(state[k], torch.Tensor))
        return {k: v for k, v in state.items() if k not in others}, others
    model = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return model, sorted(k for k in state if not k.startswith(prefix))


def non_model_entries(weights_dir: str | os.PathLike) -> list[str]:
    """Names of the top-level `common.pt` entries (not model weights) of a checkpoint; [] if none."""
    try:
        return sorted(read_common(weights_dir))
    except FileNotFoundError:
        return []


# Lightning's checkpoint keys, for checkpoints whose weights have no prefix.
_TRAINER_KEYS = {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
                 "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters", "sharded_state_dict"}
