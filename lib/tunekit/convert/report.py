"""What the conversion notebooks show: input/output choices, tables of files and keys, a logits plot.

Kept here so the notebooks stay linear: each cell calls one of these.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..paths import resolve


def output_dir(dst: str, run, default_name: str) -> tuple[Path, bool]:
    """Where a notebook writes: `dst` (relative to the repo root) or `<run dir>/<default_name>`.

    Returns (path, ours): `ours` is True for the run-dir default, which a re-run of the same run
    may replace (it is this run's own output); an explicit `dst` is only replaced with overwrite.
    """
    if dst.strip():
        return resolve(dst), False
    return run.path(default_name), True


def nemo_source_for_notebook(src: str, run, log=print) -> str:
    """The NeMo input of notebook 20: `src`, or (src="") a NeMo dir made from the tiny model first.

    The empty default lets the notebook run on its own (nbval, a first try) without an earlier
    run of 21; it writes `<run dir>/source_nemo/` exactly as 21 would and says so.
    """
    if src.strip():
        return src
    from .api import hf_to_nemo

    target = run.path("source_nemo")
    log(f"src is empty: making a NeMo dir from the tiny model first ({target}), as 21_convert_hf_to_nemo would")
    hf_to_nemo("tiny", target, overwrite=True, log=log)
    return str(target)


def files_table(root: Path):
    """A DataFrame of the files under `root` (relative path, size in kB), sorted by path."""
    import pandas as pd

    rows = [{"file": str(p.relative_to(root)), "kB": round(p.stat().st_size / 1e3, 1)}
            for p in sorted(root.rglob("*")) if p.is_file()]
    return pd.DataFrame(rows)


def nemo_keys_table(weights_dir: Path):
    """A DataFrame of the checkpoint's entries as Megatron-core sees them: key, shape, dtype, chunks."""
    import pandas as pd
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from .torch_dist import read_metadata

    md = read_metadata(weights_dir).state_dict_metadata
    rows, objects = [], 0
    for key, meta in md.items():
        if isinstance(meta, TensorStorageMetadata):
            rows.append({"key": key, "shape": list(meta.size), "dtype": str(meta.properties.dtype)[6:],
                         "chunks": len(meta.chunks)})
        else:
            objects += 1
    rows.append({"key": f"({objects} _extra_state objects)", "shape": [], "dtype": "bytes",
                 "chunks": objects})
    return pd.DataFrame(rows)


def config_table(config: dict[str, Any], fields: list[str]):
    """Selected config fields next to each other (for model_config.yaml or config.json)."""
    import pandas as pd

    return pd.DataFrame([{"field": f, "value": config.get(f)} for f in fields])


def verification_table(summary: dict[str, Any]):
    """The verification results of a conversion as a two-column DataFrame."""
    import pandas as pd

    v = summary["verification"]
    return pd.DataFrame([{"check": k, "result": v[k]} for k in sorted(v)])


def plot_logits(result, title: str):
    """Scatter of transformers vs Megatron-core logits for the first prompt (the diagonal = equal)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if result.sample_logits is None:
        ax.text(0.5, 0.5, "logits not checked\n(verify_logits=False)", ha="center", va="center")
        ax.set_axis_off()
        return fig
    ref, got = (t.float().flatten().numpy() for t in result.sample_logits)
    lo, hi = float(min(ref.min(), got.min())), float(max(ref.max(), got.max()))
    ax.plot([lo, hi], [lo, hi], color="0.7", lw=1)
    ax.scatter(ref, got, s=2, alpha=0.4)
    ax.set_xlabel("transformers LlamaForCausalLM logit")
    ax.set_ylabel("Megatron-core GPTModel logit")
    diff = result.summary["verification"]["logits_max_abs_diff"]
    ax.set_title(f"{title}\nmax |diff| = {diff:.2e}", fontsize=10)
    return fig


def check_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The deterministic, rounded facts the notebooks' nbval check cell prints."""
    v = summary["verification"]
    out = {
        "direction": summary["direction"],
        "dtype": summary["dtype"],
        "num_layers": summary["num_layers"],
        "hidden_size": summary["hidden_size"],
        "weights_bit_exact": v["weights_bit_exact"],
        "tensors_compared": v["tensors_compared"],
    }
    if "logits_match" in v:
        out["logits_match"] = v["logits_match"]
        out["logits_diff_below_1e-5"] = v["logits_max_abs_diff"] < 1e-5
        out["argmax_agreement"] = round(v["argmax_agreement"], 3)
    return dict(sorted(out.items()))
