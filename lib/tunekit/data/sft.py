"""One call from a data config to packed SFT train and dev datasets, with their report.

    data = load_sft_data({"data_dir": "datasets", "data_version": "sample",
                          "datasets": {"math_drill": {"upsampling_factor": 2}},
                          "tokenizer": "tiny", "max_seq_length": 512})
    data.train[0]   # {"input_ids", "labels", "position_ids", "doc_lens"} (tunekit.data.packing)
    data.report()   # JSON-able: per-source table, packing stats, validation summary
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .config import DataConfig
from .mixing import Mixture, build_mixture
from .packing import PackedDataset, pack_sft


@dataclass
class SFTData:
    """Packed SFT train/dev datasets and where they came from."""

    train: PackedDataset
    dev: PackedDataset
    mixture: Mixture

    def sources(self):
        """Per-source table (pandas DataFrame): original -> train/dev, tokens, shares, duplicates."""
        return self.mixture.report()

    def report(self) -> dict[str, Any]:
        """Everything worth recording in a run: sources, packing, validation counts."""
        return {"kind": "sft", "tokenizer": str(self.mixture.tokenizer_dir),
                "sources": self.sources().to_dict(orient="records"),
                "notes": list(self.mixture.notes),
                "validation": [r.summary() for r in self.mixture.reports],
                "packing_train": self.train.stats.as_dict(),
                "packing_dev": self.dev.stats.as_dict()}


def pack_split(mix: Mixture, split: str) -> PackedDataset:
    """Pack the train or dev examples of a mixture with the config's packing options."""
    cfg = mix.cfg
    files = [s.file for s in mix.sources]
    src, rec = mix.docs(split)
    pad = next((f.info.pad_id for f in files if f is not None), 0)
    return pack_sft(files, src, rec, max_seq_length=cfg.max_seq_length, pad_id=pad,
                    packing=cfg.packing, overlong=cfg.overlong)


def load_sft_data(cfg: DataConfig | Mapping[str, Any], *, show_progress: bool = True) -> SFTData:
    """Validate, tokenise (content-addressed cache), split, mix and pack SFT data.

    Args:
        cfg: a DataConfig or a mapping of its fields (extra keys, e.g. a notebook's other
            parameters, are ignored): data_dir, data_version, datasets, tokenizer,
            max_seq_length, max_dev_samples, max_dev_ratio, dev_split, upsample_dev,
            template_style, on_error, packing, overlong, workers.
    """
    mix = build_mixture(cfg, "sft", show_progress=show_progress)
    return SFTData(pack_split(mix, "train"), pack_split(mix, "dev"), mix)


def build_packed_sft(params: Any, model_dir: Path) -> tuple[PackedDataset, PackedDataset, dict[str, Any]]:
    """The SFT engine's hook: (train, dev, report) from SFT notebook params and the model dir.

    The tokenizer is the one in `model_dir` (what the model was trained with); every data option
    the params do not name keeps its DataConfig default.
    """
    values = params.to_dict() if hasattr(params, "to_dict") else dict(params)
    values["tokenizer"] = str(model_dir)
    data = load_sft_data(DataConfig.parse(values, source="SFT parameters"))
    return data.train, data.dev, data.report()
