"""The GPU path's decisions, checked on the CPU: CUDA flavours and the CUDA-unusable refusal (with a
simulated node: a fake nvidia-smi, visible GPUs, this CPU-only torch), version records, env
forwarding to remote ranks, MFU and peak-memory metrics, and the memory estimate with gradient
accumulation. What only a GPU can show (the kernels, NCCL, real memory) is `make gpu-smoke`.
"""
from __future__ import annotations

import json
import os
import stat
import types
from pathlib import Path

import pytest
import torch

from tunekit import gpu
from tunekit.errors import UserError

SMI = """#!/bin/sh
# fake nvidia-smi: {n} GPUs, driver {driver} (CUDA {cuda})
case "$1" in
  --query-gpu=*) i=0; while [ $i -lt {n} ]; do echo "{driver}, NVIDIA H200, 143771 MiB"; i=$((i+1)); done ;;
  *) echo "| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda}     |" ;;
esac
"""


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """Put a fake `nvidia-smi` first on PATH: fake_smi(n_gpus, driver, driver_cuda)."""
    def install(n: int = 8, driver: str = "550.54.15", cuda: str = "12.4") -> None:
        exe = tmp_path / "bin" / "nvidia-smi"
        exe.parent.mkdir(exist_ok=True)
        exe.write_text(SMI.format(n=n, driver=driver, cuda=cuda))
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{exe.parent}:{os.environ['PATH']}")
    for k in ("CUDA_VISIBLE_DEVICES", "TUNEKIT_EXPECT_GPUS", "TUNEKIT_DEVICE"):
        monkeypatch.delenv(k, raising=False)
    return install


# ------------------------------------------------------------------ flavours
def test_flavour_follows_the_drivers_cuda_version():
    assert gpu.flavour_for("13.0").name == "cu130" and gpu.flavour_for("13.2").name == "cu130"
    assert gpu.flavour_for("12.9").name == "cu128" and gpu.flavour_for("12.8").name == "cu128"
    assert gpu.flavour_for("12.6").name == "cu126"
    assert gpu.flavour_for("12.4") is None and gpu.flavour_for("") is None and gpu.flavour_for(None) is None
    # the same torch version in every flavour; cu130 is PyPI's default build, the others a local label
    assert {f.requirement.split("+")[0] for f in gpu.FLAVOURS.values()} == {f"torch=={gpu.TORCH_VERSION}"}
    assert gpu.FLAVOURS[gpu.DEFAULT_FLAVOUR].index_url == "https://pypi.org/simple"
    assert gpu.FLAVOURS["cu128"].requirement.endswith("+cu128")


def test_driver_info_reads_nvidia_smi(fake_smi):
    fake_smi(n=2, driver="570.86.15", cuda="12.8")
    info = gpu.driver_info()
    assert info == {"driver": "570.86.15", "driver_cuda": "12.8", "gpus": ["NVIDIA H200", "NVIDIA H200"]}


# ------------------------------------------------------------------ make setup-gpu
SETUP_GPU = Path(__file__).resolve().parents[1] / "tools" / "setup_gpu.py"


def _setup_gpu(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(SETUP_GPU), "--dry-run", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("driver, cuda, flavour, index", [
    ("570.86.15", "12.8", "cu128", "https://download.pytorch.org/whl/cu128"),
    ("560.35.03", "12.6", "cu126", "https://download.pytorch.org/whl/cu126"),
    ("580.65.06", "13.0", "cu130", "https://pypi.org/simple"),
])
def test_setup_gpu_detects_the_flavour_from_nvidia_smi(fake_smi, driver, cuda, flavour, index):
    fake_smi(n=8, driver=driver, cuda=cuda)
    done = _setup_gpu()
    assert done.returncode == 0, done.stderr
    assert f"for {flavour} (CUDA" in done.stdout and f"driver {driver} supports CUDA {cuda}" in done.stdout
    install = next(x for x in done.stdout.splitlines() if " install " in x)
    assert f"--index-url {index}" in install and "--only-binary=:all:" in install
    assert install.endswith(gpu.FLAVOURS[flavour].requirement)
    assert ("--extra-index-url https://pypi.org/simple" in install) == (flavour != "cu130")


def test_setup_gpu_takes_the_flavour_named_and_refuses_others_in_one_sentence(fake_smi, tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi: only an explicit CUDA=... works
    done = _setup_gpu("--cuda", "cu126")
    assert done.returncode == 0 and "as requested" in done.stdout and "torch==2.13.0+cu126" in done.stdout
    for args, words in ((("--cuda", "cu118"), "CUDA=cu118 is not a flavour the kit installs"),
                        ((), "nvidia-smi is not available here")):
        done = _setup_gpu(*args)
        assert done.returncode == 1 and words in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    fake_smi(n=8, driver="535.104.05", cuda="12.2")  # older than every flavour
    done = _setup_gpu()
    assert done.returncode == 1 and "ask for a newer driver" in done.stderr
    # the Makefile passes CUDA=... through to the script
    plan = subprocess.run(["make", "-n", "setup-gpu", "CUDA=cu128"], cwd=SETUP_GPU.parents[1], capture_output=True,
                          text=True, timeout=60)
    assert "tools/setup_gpu.py --cuda cu128" in plan.stdout


# ------------------------------------------------------------------ the refusal
def test_visible_but_unusable_gpus_stop_training_before_the_cpu_fallback(fake_smi):
    from tunekit.train.distributed import init_distributed

    assert not torch.cuda.is_available()  # this machine: a CPU-only torch, as on a mis-set-up GPU node
    fake_smi(n=8, driver="550.54.15", cuda="12.4")
    with pytest.raises(UserError) as err:
        init_distributed()
    msg = str(err.value)
    assert "GPUs are visible (nvidia-smi lists 8 GPU(s))" in msg and "\n" not in msg
    assert f"torch {torch.__version__} is built for CUDA none" in msg and "the driver is 550.54.15 (CUDA 12.4)" in msg
    assert "CPU-only build" in msg and "make setup-gpu" in msg


def test_the_refusal_names_the_flavour_the_driver_supports():
    info = {"driver": "570.86.15", "driver_cuda": "12.8", "gpus": ["NVIDIA H200"] * 8}
    msg = gpu.cuda_problem({}, info, cuda_available=False, torch_cuda="13.0")
    assert "built for CUDA 13.0" in msg and "the driver supports CUDA 12.8 only" in msg
    assert "make setup-gpu CUDA=cu128" in msg
    old = dict(info, driver="535.104.05", driver_cuda="12.2")
    assert "ask for a newer driver" in gpu.cuda_problem({}, old, cuda_available=False, torch_cuda="13.0")
    assert gpu.cuda_problem({}, info, cuda_available=True, torch_cuda="13.0") is None


@pytest.mark.parametrize("environ, evidence", [
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
    ({"TUNEKIT_EXPECT_GPUS": "8"}, "the PBS job requested 8 GPU(s) per node"),
    ({"CUDA_VISIBLE_DEVICES": ""}, None),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
    ({"TUNEKIT_EXPECT_GPUS": "0"}, None),
    ({}, None),
])
def test_what_counts_as_visible_gpus(environ, evidence):
    assert gpu.visible_gpus(environ, info={}) == evidence
    problem = gpu.cuda_problem(environ, {}, cuda_available=False, torch_cuda=None)
    assert (problem is None) == (evidence is None)


def test_cpu_on_purpose_and_no_gpus_train_on_the_cpu(fake_smi, monkeypatch):
    from tunekit.train.distributed import init_distributed

    assert init_distributed().device.type == "cpu"  # nothing visible: fine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("TUNEKIT_DEVICE", "cpu")  # the escape hatch the message names
    assert init_distributed().device.type == "cpu"
    monkeypatch.delenv("TUNEKIT_DEVICE")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES=0"):
        init_distributed()


def test_the_job_line_reports_and_the_check_exits_2(fake_smi, capsys, monkeypatch):
    fake_smi(n=1, driver="550.54.15", cuda="12.4")
    assert gpu.main(["--report"]) == 0  # the job template's line: report, never fail the job there
    out = capsys.readouterr()
    assert out.out.startswith("[gpu] torch ") and "driver 550.54.15 (CUDA 12.4)" in out.out
    assert out.err.startswith("warning: GPUs are visible")
    assert gpu.main([]) == 2 and capsys.readouterr().err.startswith("error: GPUs are visible")


def _simulated_cuda(monkeypatch):
    """torch.cuda answering like one H200 (only what the version records read)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: types.SimpleNamespace(total_memory=143e9))
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 29, 7))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)


def test_gpu_versions_are_recorded_in_env_json(fake_smi, monkeypatch, tmp_path):
    from tunekit.runs import start_run

    fake_smi(n=1, driver="580.65.06", cuda="13.0")
    _simulated_cuda(monkeypatch)
    v = gpu.versions()
    assert v["nccl"] == "2.29.7" and v["cudnn"] == 91002 and v["driver"] == "580.65.06"
    assert v["gpus"] == ["NVIDIA H200"] and v["gpu_memory_gb"] == 143.0
    line = gpu.versions_line(v)
    assert "NCCL 2.29.7" in line and "driver 580.65.06 (CUDA 13.0)" in line and "1 x NVIDIA H200" in line
    run = start_run("sft", {"x": 1}, "gpu-env", str(tmp_path / "runs"))
    devices = json.loads(run.path("env.json").read_text())["devices"]
    assert devices["cuda"] == 1 and devices["nccl"] == "2.29.7" and devices["driver"] == "580.65.06"
    assert devices["torch"] == torch.__version__ and "cudnn" in devices


# ------------------------------------------------------------------ launching remote ranks
def test_environment_is_forwarded_by_prefix_and_never_by_value(tmp_path, monkeypatch):
    from tunekit.train.distributed import build_command, forwarded_env

    environ = {"NCCL_IB_HCA": "mlx5", "NCCL_NET_GDR_LEVEL": "5", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
               "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "HF_TOKEN": "hf_secret",
               "UCX_TLS": "rc", "OMPI_MCA_btl": "^openib", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
               "TUNEKIT_DEADLINE": "1", "WANDB_API_KEY": "k", "PATH": "/bin", "LD_LIBRARY_PATH": "/x",
               "OMPI_COMM_WORLD_RANK": "3", "RANK": "3", "MASTER_ADDR": "h", "HOME": "/root", "FOO": "bar",
               "NCCLX": "no-underscore"}
    assert forwarded_env(environ) == sorted([
        "CUDA_DEVICE_ORDER", "HF_TOKEN", "LD_LIBRARY_PATH", "NCCL_IB_HCA", "NCCL_NET_GDR_LEVEL", "OMPI_MCA_btl",
        "PATH", "PYTORCH_CUDA_ALLOC_CONF", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TUNEKIT_DEADLINE", "UCX_TLS",
        "WANDB_API_KEY"])
    (tmp_path / "mpirun").write_text("#!/bin/sh\n")
    (tmp_path / "mpirun").chmod(0o755)
    for k in list(os.environ):
        if k.startswith(("NCCL_", "UCX_", "HF_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")   # a new knob set in the job reaches every rank
    monkeypatch.setenv("UCX_NET_DEVICES", "mlx5_0:1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    cmd, _ = build_command("sft", tmp_path, 8, ["h1", "h2"], python="py")
    pairs = {cmd[i + 1] for i, c in enumerate(cmd) if c == "-x"}
    assert {"NCCL_SOCKET_IFNAME", "UCX_NET_DEVICES", "HF_TOKEN", "MASTER_ADDR", "MASTER_PORT"} <= pairs
    assert not any("secret" in c for c in cmd)


# ------------------------------------------------------------------ MFU and peak memory
def test_model_flops_and_mfu():
    from tunekit.train.memory import LLMJP_4_8B, count_params
    from tunekit.train.perf import flops_per_token, mfu, summarize

    f = flops_per_token(LLMJP_4_8B, 4096)
    total, layer, emb = count_params(LLMJP_4_8B)
    # 6 x (decoder matmuls + output layer), norms excluded; + 12 L H Q T attention
    matmul = total - emb - 2 * 4096 * 32 - 4096
    assert f == pytest.approx(6 * matmul + 12 * 32 * 32 * 128 * 4096)
    assert 5.0e10 < f < 6.0e10  # ~6 x 8.6B: the familiar order of magnitude
    assert mfu(1e4, f, 8, 989.5e12) == pytest.approx(1e4 * f / (8 * 989.5e12))
    assert mfu(1e4, f, 8, None) is None
    recs = [{"step": 1, "mfu": 0.9, "peak_mem_gb": 70.0}, {"step": 2, "mfu": 0.4, "peak_mem_gb": 71.5},
            {"step": 3, "mfu": 0.5}, {"step": 3, "val_loss": 1.0}]
    assert summarize(recs) == {"peak_mem_gb": 71.5, "mfu": 0.45}  # step 1 (warm-up) not averaged
    assert summarize([{"step": 1, "loss": 1.0}]) == {"peak_mem_gb": None, "mfu": None}


def test_training_records_mfu_per_step_and_in_the_result(tmp_path, model_dir, monkeypatch):
    # On CPU there is no known peak: TUNEKIT_PEAK_TFLOPS supplies one, so the loop's wiring shows.
    from helpers import train_synthetic

    from tunekit.train.distributed import init_distributed

    monkeypatch.setenv("TUNEKIT_PEAK_TFLOPS", "0.001")
    params = dict(max_seq_length=64, global_batch_size=4, micro_batch_size=2, max_steps=3, val_interval=0,
                  save_interval=0, publish="final", run_name="mfu", runs_dir=str(tmp_path / "runs"))
    run, result = train_synthetic("sft", params, model_dir, 16, 0, env=init_distributed())
    steps = [r for r in run.metrics() if "lr" in r]
    assert len(steps) == 3 and all(0 < r["mfu"] for r in steps)
    assert all("peak_mem_gb" not in r for r in steps)  # no accelerator: nothing invented
    assert result["mfu"] == pytest.approx(sum(r["mfu"] for r in steps[1:]) / 2, abs=1e-4)
    assert result["gpu"] is None and result["peak_mem_gb"] is None
    from tunekit.train.report import sft_summary

    assert sft_summary(result)["mfu"] == result["mfu"]  # and so in the run's summary.json


# ------------------------------------------------------------------ memory estimate
def test_memory_estimate_counts_the_fp32_gradient_held_while_accumulating():
    from tunekit.train.memory import GB, LLMJP_4_8B, count_params, estimate

    total = count_params(LLMJP_4_8B)[0]
    one = estimate(LLMJP_4_8B, 16, 4, 4096, grad_accum=1)
    many = estimate(LLMJP_4_8B, 16, 4, 4096, grad_accum=8)
    # FSDP2 keeps the UNSHARDED gradient in fp32 between micro-batches: 4 bytes x P on every GPU
    assert one.accumulated_grads == 0 and many.accumulated_grads == pytest.approx(4 * total / GB, abs=0.05)
    assert 34.0 < many.accumulated_grads < 35.0 and many.total == pytest.approx(one.total + 34.4, abs=0.1)
    assert estimate(LLMJP_4_8B, 64, 4, 4096, grad_accum=8).accumulated_grads == many.accumulated_grads
    lora = estimate(LLMJP_4_8B, 16, 4, 4096, grad_accum=8, adapter_params=100_000_000)
    assert lora.accumulated_grads == pytest.approx(0.4, abs=0.01)  # adapters only


def test_activation_checkpointing_every_n_layers_sits_between_off_and_all():
    from tunekit.train.memory import LLMJP_4_8B, cheapest_fitting, estimate

    acts = [estimate(LLMJP_4_8B, 16, 4, 4096, activation_checkpointing=ac, checkpoint_every=n).activations
            for ac, n in ((False, 1), (True, 4), (True, 2), (True, 1))]
    assert acts == sorted(acts, reverse=True) and len(set(acts)) == 4
    kw = dict(gpus=16, micro_batch=4, seq=4096)
    assert cheapest_fitting(LLMJP_4_8B, 1000, **kw) == (False, 1)
    assert cheapest_fitting(LLMJP_4_8B, 0.75 * 141, **kw) == (True, 2)
    assert cheapest_fitting(LLMJP_4_8B, 0.75 * 141, grad_accum=8, **kw) == (True, 1)
    assert cheapest_fitting(LLMJP_4_8B, 10, **kw) is None


PARAMS_8B = sorted(Path(__file__).resolve().parents[1].glob("job_templates/params/llm-jp-4-8b/*/*.yaml"))


@pytest.mark.parametrize("path", [p for p in PARAMS_8B if p.parent.name in ("sft", "dpo")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_8b_params_files_use_the_cheapest_checkpointing_that_fits(path):
    # The GPUs come from the file's own documented `tunekit job submit` line; the budget is 75% of
    # an H200's 141 GB (the estimate leaves out fragmentation beyond its allowance).
    import re

    from tunekit.jobs.resources import RESOURCE_TYPES
    from tunekit.paramfile import load
    from tunekit.train.memory import LLMJP_4_8B, SETTINGS, for_params
    from tunekit.train.params import DPOParams, SFTParams

    submit = next(line for line in path.read_text().splitlines() if "tunekit job submit" in line)
    queue = re.search(r"--queue (\S+)", submit).group(1)
    nodes = int(m.group(1)) if (m := re.search(r"--nodes (\d+)", submit)) else 1
    gpus = RESOURCE_TYPES[queue].gpus_per_node * nodes
    cls = SFTParams if path.parent.name == "sft" else DPOParams
    cfg = cls.parse({k: v for k, v in load(path).items() if k not in ("model", "init")})
    accum = cfg.global_batch_size // (cfg.micro_batch_size * gpus)
    fits = [(ac, n) for ac, n in SETTINGS if for_params(cfg.model_copy(update={
        "activation_checkpointing": ac, "activation_checkpointing_every": n}), LLMJP_4_8B, gpus, accum).total
        <= 0.75 * 141]
    assert fits, f"{path.name}: nothing fits {gpus} GPU(s)"
    chosen = (cfg.activation_checkpointing, cfg.activation_checkpointing_every if cfg.activation_checkpointing else 1)
    assert chosen == fits[0], f"{path.parent.name}/{path.name}: uses {chosen}, the cheapest that fits is {fits[0]}"


def test_plan_line_warns_before_an_out_of_memory():
    from tunekit.train.memory import LLMJP_4_8B, estimate, plan_line

    ok = plan_line(estimate(LLMJP_4_8B, 16, 4, 4096), 141.0)
    assert ok.startswith("memory estimate: ~33.8 GB per GPU") and ok.endswith("of 141 GB")
    bad = plan_line(estimate(LLMJP_4_8B, 16, 4, 4096, activation_checkpointing=False), 141.0)
    assert "likely OUT OF MEMORY" in bad


# ------------------------------------------------------------------ model building options
def test_compile_layers_compiles_each_block_and_keeps_the_numbers(model_dir, monkeypatch):
    # Traced with aot_eager (dynamo + AOT autograd, no code generation) so it runs in seconds on
    # the CPU; on a GPU the backend is inductor. The per-document attention's graph breaks are fine.
    from helpers import synthetic_packed
    from tunekit.train import engine
    from tunekit.train.batches import collate_packed
    from tunekit.train.distributed import init_distributed

    monkeypatch.setattr(engine, "COMPILE_BACKEND", "aot_eager")
    env = init_distributed()
    batch = collate_packed(synthetic_packed(6, 32, 96, seed=1, min_len=3, max_len=20), varlen=True, pad_id=4)
    out = {}
    for compiled in (False, True):
        model, _ = engine.load_for_training(model_dir, env, compile_layers=compiled)
        layers = model.lm.model.layers
        assert all((getattr(layer, "_compiled_call_impl", None) is not None) == compiled for layer in layers)
        lp = model(labels=batch.labels, **batch.model_inputs())
        (-lp.sum()).backward()
        out[compiled] = (lp.detach(), layers[0].mlp.down_proj.weight.grad.full_tensor().clone())
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-4, atol=1e-6)


def test_frozen_model_has_no_gradients_and_stores_the_compute_dtype(model_dir):
    from tunekit.train.distributed import init_distributed
    from tunekit.train.engine import build_optimizer, load_for_training
    from tunekit.train.params import SFTParams

    env = init_distributed()
    frozen, setup = load_for_training(model_dir, env, precision="bf16", frozen=True)
    assert not frozen.training and setup.n_trainable == 0
    assert {p.dtype for p in frozen.parameters()} == {torch.bfloat16} and not any(p.requires_grad for p in
                                                                                  frozen.parameters())
    policy, _ = load_for_training(model_dir, env)
    opt = build_optimizer(policy, SFTParams())
    assert opt.defaults.get("fused") is None  # the fused kernel is CUDA-only; on GPU params it is on


def test_fused_adamw_on_gpu_parameters_and_pinned_host_memory_for_cuda_batches(monkeypatch):
    # Simulated: what build_optimizer and to_device ask torch for when the tensors are on a GPU.
    from tunekit.train.batches import to_device
    from tunekit.train.engine import build_optimizer

    seen = {}
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kw: seen.update(kw) or "opt")
    cfg = types.SimpleNamespace(weight_decay=0.1, lr=1e-4, adam_beta1=0.9, adam_beta2=0.95)
    for on_gpu in (True, False):
        param = types.SimpleNamespace(requires_grad=True, ndim=2, is_cuda=on_gpu)
        build_optimizer(types.SimpleNamespace(parameters=lambda p=param: [p]), cfg)
        assert seen["fused"] is (True if on_gpu else None)

    moved = []

    class Pinned:
        def to(self, device, non_blocking=False):
            moved.append((device, non_blocking))
            return "on " + device

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: Pinned())
    assert to_device(torch.zeros(3), "cuda") == "on cuda" and moved == [("cuda", True)]
    assert isinstance(to_device(torch.zeros(3), "cpu"), torch.Tensor) and len(moved) == 1  # no pinning for CPU
