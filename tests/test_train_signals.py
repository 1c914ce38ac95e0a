"""Signals end training cleanly: SIGTERM at seeded random moments -> one checkpoint, status
"interrupted", a non-zero exit -> resume -> the final weights are bit for bit those of an
uninterrupted run, with 1 and with 2 processes; a second signal ends the process at once; a kill
before the first checkpoint leaves metrics.jsonl with one record per step after the resume.

Real subprocesses (tests/helpers.py as the training rank, torchrun for 2 processes), the tiny
model, 8 steps, checkpoints every 2 steps, validation every 4.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import run_worker, tiny_llama_dir
from tunekit.runs import read_metrics
from tunekit.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

STEPS, SAVE, VAL = 8, 2, 4
VALIDATIONS = [0, 2, 4, 6, 8]  # step 0, every val_interval and every checkpoint
RNG = random.Random(15)  # the "random moments", fixed so a failure reproduces


def _params(tmp: Path, name: str, **over) -> Path:
    p = tmp / f"{name}.yaml"
    base = dict(max_seq_length=64, global_batch_size=8, micro_batch_size=2, max_steps=STEPS, lr=0.01,
                min_lr=0.001, warmup_steps=2, constant_steps=1, val_interval=VAL, save_interval=SAVE,
                keep_top_k=1, publish="best", seed=5, run_name=name, runs_dir=str(tmp / "runs"))
    base.update(over)
    p.write_text(yaml.safe_dump(base))
    return p


def _worker(tmp: Path, model: Path, name: str, *extra: str, nproc: int = 1, **over):
    args = ["sft", "--params", str(_params(tmp, name, **over)), "--model-dir", str(model), "--n-train", "120",
            "--n-dev", "30", *extra]
    return run_worker(args, nproc=nproc, timeout=300)


def _dir(tmp: Path, name: str) -> Path:
    return tmp / "runs" / "sft" / name


def _result(tmp: Path, name: str) -> dict:
    return json.loads((_dir(tmp, name) / "train_result.json").read_text())


def _records(tmp: Path, name: str) -> tuple[list[int], list[int]]:
    recs = read_metrics(_dir(tmp, name))
    return [r["step"] for r in recs if "loss" in r], [r["step"] for r in recs if "val_loss" in r]


def _weights(tmp: Path, name: str):
    from safetensors.torch import load_file

    return load_file(str(_dir(tmp, name) / "hf_model" / "model.safetensors"))


def _assert_bit_identical(tmp: Path, name: str, ref: str) -> None:
    import torch

    a, b = _weights(tmp, name), _weights(tmp, ref)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{name}: weights differ from the uninterrupted run in {different[:3]}"


def _stop_step(moment: str, n: int) -> int:
    """The step after which a SIGTERM at this moment stops training."""
    if moment == "in_validation":
        return VALIDATIONS[n - 1]
    return n


def _moments(kinds: list[str]) -> list[tuple[str, int]]:
    choices = {"after_step": range(1, STEPS), "in_backward": range(1, STEPS), "in_save": range(SAVE, STEPS, SAVE),
               "in_validation": (1, 2, 3)}
    return [(k, RNG.choice(list(choices[k]))) for k in kinds]


MOMENTS_1 = _moments(["after_step", "in_backward", "in_save", "in_validation"])
MOMENTS_2 = _moments(["in_save", "after_step"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signals")
    model = tiny_llama_dir(tmp / "model", vocab=96)
    for name, nproc in (("ref1", 1), ("ref2", 2)):
        done = _worker(tmp, model, name, nproc=nproc)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return tmp, model


def _interrupt_then_resume(tmp: Path, model: Path, name: str, term: str, stop_at: int, nproc: int) -> None:
    cut = _worker(tmp, model, name, "--term", term, nproc=nproc)
    out = (cut.stdout + cut.stderr)[-3000:]
    if nproc == 1:
        assert cut.returncode == 128 + signal.SIGTERM, out
    else:
        assert cut.returncode != 0, out  # torchrun reports the ranks' non-zero exit
    result = _result(tmp, name)
    assert (result["status"], result["stop_signal"], result["step"]) == ("interrupted", "SIGTERM", stop_at), out
    kept = [c.step for c in list_checkpoints(_dir(tmp, name) / "checkpoints")]
    assert (kept[-1] if kept else 0) == stop_at, kept  # the step it stopped after is saved (none at 0)
    steps, vals = _records(tmp, name)
    assert steps == list(range(1, stop_at + 1))
    resumed = _worker(tmp, model, name, nproc=nproc)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    result = _result(tmp, name)
    assert result["status"] == "completed" and result["stop_signal"] is None
    assert result["resumed_from"] == (stop_at or None)
    assert _records(tmp, name) == (list(range(1, STEPS + 1)), VALIDATIONS)


@pytest.mark.parametrize("moment,n", MOMENTS_1)
def test_sigterm_then_resume_is_bit_identical_one_process(setup, moment, n):
    tmp, model = setup
    name = f"one-{moment}-{n}"
    _interrupt_then_resume(tmp, model, name, f"{moment}:{n}", _stop_step(moment, n), nproc=1)
    _assert_bit_identical(tmp, name, "ref1")


@pytest.mark.parametrize("moment,n", MOMENTS_2)
def test_sigterm_then_resume_is_bit_identical_two_processes(setup, moment, n):
    """In a save every rank gets the signal (as from torchrun); after a step only rank 1 does."""
    tmp, model = setup
    target = "" if moment == "in_save" else "@rank1"
    name = f"two-{moment}-{n}"
    _interrupt_then_resume(tmp, model, name, f"{moment}:{n}{target}", _stop_step(moment, n), nproc=2)
    _assert_bit_identical(tmp, name, "ref2")


def test_a_second_signal_ends_the_process_at_once(setup):
    tmp, model = setup
    cut = _worker(tmp, model, "twice", "--term", "after_step:3,twice")
    assert cut.returncode == -signal.SIGTERM, (cut.stdout + cut.stderr)[-2000:]
    assert not (_dir(tmp, "twice") / "train_result.json").exists()
    assert [c.step for c in list_checkpoints(_dir(tmp, "twice") / "checkpoints")] == [2]


def test_the_same_stop_arriving_twice_at_once_is_one_request(setup):
    tmp, model = setup
    cut = _worker(tmp, model, "dup", "--term", "after_step:3,dup")
    assert cut.returncode == 128 + signal.SIGTERM, (cut.stdout + cut.stderr)[-2000:]
    assert _result(tmp, "dup")["step"] == 3
    assert [c.step for c in list_checkpoints(_dir(tmp, "dup") / "checkpoints")][-1] == 3


def test_a_kill_before_the_first_checkpoint_leaves_one_record_per_step_after_resume(setup):
    tmp, model = setup
    killed = _worker(tmp, model, "early", "--kill-after-step", "1")
    assert killed.returncode == -9
    assert _records(tmp, "early") == ([1], [0]) and not list_checkpoints(_dir(tmp, "early") / "checkpoints")
    resumed = _worker(tmp, model, "early")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _records(tmp, "early") == (list(range(1, STEPS + 1)), VALIDATIONS)
    _assert_bit_identical(tmp, "early", "ref1")


def test_two_writers_of_one_run_name_the_second_is_refused(setup):
    """Two trainings started with the same run_name: the second stops in one sentence, the first
    keeps metrics.jsonl with one record per step (they used to interleave, both exiting 0)."""
    tmp, model = setup
    first = subprocess.Popen([sys.executable, str(Path(__file__).parent / "helpers.py"), "sft", "--params",
                              str(_params(tmp, "pair")), "--model-dir", str(model)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while not (_dir(tmp, "pair") / ".lock").exists() or not (_dir(tmp, "pair") / "launches.jsonl").exists():
            assert first.poll() is None and time.time() < deadline, first.stdout.read()[-2000:]
            time.sleep(0.1)
        second = _worker(tmp, model, "pair")
        assert second.returncode != 0
        assert "another process is writing this run (pid" in second.stderr, second.stderr[-2000:]
        assert f"pid {first.pid} on host" in second.stderr
    finally:
        out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-2000:]
    assert _records(tmp, "pair") == (list(range(1, STEPS + 1)), VALIDATIONS)
    assert len((_dir(tmp, "pair") / "launches.jsonl").read_text().splitlines()) == 1
