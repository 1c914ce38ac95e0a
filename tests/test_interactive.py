"""What a person sees in JupyterLab, checked on a real IPython kernel (no browser needed):

- a kernel started the way a Jupyter server starts it gets widget progress bars and a live
  training plot that is updated in place (one display, then `update_display_data`);
- a kernel started the way papermill starts it (no JPY_SESSION_NAME) gets neither: periodic log
  lines, so the notebooks papermill saves stay plain text;
- an interactive run leaves a record in its run directory: the code the kernel executed (from
  IPython's history, back to the parameters cell) and what each cell printed and displayed, with
  tables as CSV and figures as PNG.

tests/browser/ drives the same through a real JupyterLab in Chromium.
"""
from __future__ import annotations

import json
import os
import queue
from pathlib import Path

import pytest

jupyter_client = pytest.importorskip("jupyter_client")


class Kernel:
    """A kernel of this environment with a chosen environment; run() returns the iopub messages."""

    def __init__(self, env: dict[str, str]):
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, extra_arguments=["--HistoryManager.enabled=True"])
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 120) -> list[dict]:
        msg_id = self.kc.execute(code)
        msgs = []
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no reply for {code[:60]!r}")
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return msgs

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _kernel_env(tmp_path: Path, lab: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TUNEKIT_HEADLESS", "JPY_SESSION_NAME")}
    env.update(TUNEKIT_RUNS_DIR=str(tmp_path / "runs"), MPLBACKEND="module://matplotlib_inline.backend_inline",
               OMP_NUM_THREADS="1")
    if lab:
        env["JPY_SESSION_NAME"] = str(tmp_path / "notebook.ipynb")  # what jupyter_server sets
    return env


TRAIN = """
from tunekit.runs import start_run
from tunekit.train.monitor import Monitor
run = start_run("sft", {"steps": 6}, "r1")
monitor = Monitor(run, is_main=True, total_steps=6, desc="sft")
for step in range(1, 7):
    monitor.step({"step": step, "loss": 2.0 / step, "lr": 1e-3})
    if step % 3 == 0:
        monitor.validation({"step": step, "val_loss": 2.5 / step})
monitor.close()
"""


def _kinds(msgs: list[dict]) -> list[str]:
    return [m["msg_type"] for m in msgs]


def test_jupyterlab_kernel_gets_widget_bar_and_a_live_plot_updated_in_place(tmp_path):
    k = Kernel(_kernel_env(tmp_path, lab=True))
    try:
        msgs = k.run(TRAIN)
    finally:
        k.stop()
    errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
    assert errors == []
    # The tqdm bar is an ipywidgets progress bar (a comm), not text in stderr boxes.
    comms = [m for m in msgs if m["msg_type"] == "comm_open"]
    assert any(m["content"]["data"]["state"].get("_model_name") == "FloatProgressModel" for m in comms)
    assert not any(m["msg_type"] == "stream" and m["content"]["name"] == "stderr" and "%|" in m["content"]["text"]
                   for m in msgs)
    # One live plot: shown once with a display id, then updated in place, never shown twice.
    shown = [m for m in msgs if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]]
    updates = [m for m in msgs if m["msg_type"] == "update_display_data"]
    assert len(shown) == 1, _kinds(msgs)
    display_id = shown[0]["content"]["transient"]["display_id"]
    assert updates and all(u["content"]["transient"]["display_id"] == display_id for u in updates)
    assert all("image/png" in u["content"]["data"] for u in updates)


def test_papermill_style_kernel_keeps_plain_log_lines(tmp_path):
    k = Kernel(_kernel_env(tmp_path, lab=False))
    try:
        msgs = k.run(TRAIN)
    finally:
        k.stop()
    assert not [m for m in msgs if m["msg_type"] in ("comm_open", "display_data", "update_display_data")]
    text = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
    assert "step=3 val_loss=0.8333" in text and "step=6 val_loss=0.4167" in text


def test_interactive_run_records_code_outputs_tables_and_figures(tmp_path):
    k = Kernel(_kernel_env(tmp_path, lab=True))
    try:
        k.run("x = 1  # before the parameters: not part of the run")
        k.run('steps: int = 4  # a parameter\nrun_name: str = "r2"\nruns_dir: str = ""')
        k.run('from tunekit.runs import start_run\nrun = start_run("sft", {"steps": steps}, run_name)\nrun')
        k.run('print("hello from the run")\nimport pandas as pd\npd.DataFrame({"a": [1, 2], "b": [3, 4]})')
        k.run("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n_ = ax.plot([1, 2, 3])\nplt.show()")
        k.run("1 / 0")
    finally:
        k.stop()
    run_dir = tmp_path / "runs" / "sft" / "r2"
    [record] = sorted(run_dir.glob("session-*.ipynb"))
    nb = json.loads(record.read_text(encoding="utf-8"))
    codes = ["".join(c["source"]) for c in nb["cells"]]
    assert codes[0].startswith("steps: int = 4") and not any(c.startswith("x = 1") for c in codes)
    assert codes[1].startswith("from tunekit.runs import start_run")
    assert len(codes) == 5 and codes[-1] == "1 / 0"
    outs = [c["outputs"] for c in nb["cells"]]
    assert "Run(sft/r2)" in "".join(outs[1][0]["data"]["text/plain"])
    assert outs[2][0] == {"name": "stdout", "output_type": "stream", "text": ["hello from the run\n"]}
    assert "text/html" in outs[2][1]["data"]
    assert any("image/png" in o.get("data", {}) for o in outs[3])
    assert outs[4][0]["output_type"] == "error" and outs[4][0]["ename"] == "ZeroDivisionError"
    files = {p.name for p in (run_dir / record.stem).iterdir()}
    n_table, n_figure = nb["cells"][2]["execution_count"], nb["cells"][3]["execution_count"]
    assert files == {f"in{n_figure}-figure1.png", f"in{n_table}-table1.csv"}
    assert (run_dir / record.stem / f"in{n_table}-table1.csv").read_text() == ",a,b\n0,1,3\n1,2,4\n"
