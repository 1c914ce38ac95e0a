"""What a training notebook shows before it trains: the shared part of SFT's and DPO's "prep"."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError


@dataclass
class StagePrep:
    """Model dir, datasets, data report and step plan, resolved and checked before any training."""

    model_dir: Path
    train: Any
    dev: Any
    report: dict[str, Any]
    plan: Any
    spawn: bool  # True: the run_* call will launch worker processes

    def sources(self):
        """Per-dataset table: records -> train/dev, tokens, shares, duplicates."""
        import pandas as pd

        return pd.DataFrame(self.report.get("sources", []))

    def plan_table(self):
        """The step plan as a one-column table."""
        import pandas as pd

        return pd.Series(self.plan.to_dict(), name="plan").to_frame()

    def split_rows(self, prefix: str):
        """One row per split from report entries named `<prefix><split>` (e.g. packing_train)."""
        import pandas as pd

        rows = [dict(split=k.split("_")[1], **v) for k, v in self.report.items() if k.startswith(prefix)]
        return pd.DataFrame(rows)


def run_prepared(prep: StagePrep, cfg, run, worker: str, train_fn: Callable[..., dict]) -> dict[str, Any]:
    """Train in this kernel, or launch `worker` processes and wait for their train_result.json."""
    from . import launch
    from .session import read_result

    if prep.spawn:
        launch.spawn_workers(worker, run.dir, cfg.nproc_per_node)
        result = read_result(run.dir)
        if result is None:
            raise UserError(f"{run.dir}: the training processes ended without a train_result.json")
        return result
    return train_fn(cfg, run, datasets=(prep.train, prep.dev, prep.report), model_dir=prep.model_dir)
