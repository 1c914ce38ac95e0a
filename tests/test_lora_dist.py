"""LoRA under FSDP2 with 2 gloo processes (torchrun): adapters sharded in the same units as their
frozen base weights train exactly like in 1 process, and the base stays bit-identical."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunekit.train.synthetic import tiny_llama_dir

pytestmark = pytest.mark.slow

# One rank of a data-parallel LoRA run over a fixed global batch of 4 sequences: each rank takes
# its share, the loss is normalised by the GLOBAL token count times world size (FSDP averages
# gradients over ranks), 3 AdamW steps, then rank 0 saves the gathered full weights.
WORKER = r'''
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from test_lora import SPEC, build_lora_model
from tunekit.train.publish import gather_full_state_dict
from tunekit.train.session import build_optimizer
from types import SimpleNamespace
model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
model, env = build_lora_model(model_dir, SPEC)
opt = build_optimizer(model, SimpleNamespace(weight_decay=0.1, lr=0.02, adam_beta1=0.9, adam_beta2=0.98))
g = torch.Generator().manual_seed(0)
ids = torch.randint(5, 96, (4, 24), generator=g)
labels = torch.roll(ids, -1, 1)
per = 4 // env.world_size
mine = slice(env.rank * per, (env.rank + 1) * per)
for step in range(3):
    lp = model(labels=labels[mine], input_ids=ids[mine])
    (-lp.sum() * env.world_size / labels.numel()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
sd = gather_full_state_dict(model)
if env.is_main:
    torch.save(sd, out)
import torch.distributed as dist
dist.barrier()  # tear down together (see tunekit.train.distributed.shutdown)
dist.destroy_process_group()
'''


def _run(tmp: Path, model: Path, nproc: int) -> dict:
    script = tmp / "lora_worker.py"
    script.write_text(WORKER)
    out = tmp / f"weights_{nproc}.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(script), str(model), str(out)]
    else:
        cmd = [sys.executable, str(script), str(model), str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 and "terminate called without an active exception" in res.stderr:
        # Seen twice, only late in full CI runs: a rank aborts inside gloo's C++ transport with
        # no Python frame (a connection-setup race, not this code). One fresh launch decides; a
        # second abort, or any other failure, still fails the test.
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return torch.load(out)


def test_two_process_lora_equals_one_process(tmp_path):
    from safetensors.torch import load_file

    model = tiny_llama_dir(tmp_path / "model", vocab=96)
    one, two = _run(tmp_path, model, 1), _run(tmp_path, model, 2)
    assert one.keys() == two.keys()
    base = load_file(str(model / "model.safetensors"))
    lora = [k for k in one if ".lora_" in k]
    assert lora and all(not torch.equal(one[k], torch.zeros_like(one[k])) for k in lora if ".lora_B." in k)
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=1e-5, msg=k)
        if ".lora_" not in k:  # frozen base: untouched in both runs
            assert torch.equal(one[k], base[k.replace(".base_layer.", ".")]), k
            assert torch.equal(two[k], base[k.replace(".base_layer.", ".")]), k


# ------------------------------------------------------------------------------ the engine
# The synthetic-data SFT worker with `peft: lora`; optionally SIGKILLed right after step N.
KILL_AFTER = r'''
import os, signal, sys
at, argv = int(sys.argv[1]), sys.argv[2:]
if at > 0:
    import tunekit.train.loop as loop
    orig = loop.Monitor.step
    def step(self, record):
        orig(self, record)
        if record["step"] == at:
            os.kill(os.getpid(), signal.SIGKILL)
    loop.Monitor.step = step
from tunekit.train.synthetic import main
sys.exit(main(argv))
'''


def _engine(tmp: Path, model: Path, name: str, nproc: int = 1, kill_after: int = 0):
    import yaml

    params = tmp / f"{name}.yaml"
    params.write_text(yaml.safe_dump(dict(
        max_seq_length=64, global_batch_size=8, micro_batch_size=2, max_steps=6, lr=0.02, min_lr=0.002,
        warmup_steps=1, constant_steps=1, val_interval=3, save_interval=2, publish="final", seed=5,
        peft="lora", lora_rank=4, lora_alpha=8.0, lora_target_modules="attention,mlp",
        run_name=name, runs_dir=str(tmp / "runs"))))
    script = tmp / "kill_after.py"
    script.write_text(KILL_AFTER)
    args = ["--params", str(params), "--model-dir", str(model), "--n-train", "80", "--n-dev", "20"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TUNEKIT_HEADLESS="1", PYTHONHASHSEED="0")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "tunekit.train.synthetic", *args]
    else:
        cmd = [sys.executable, str(script), str(kill_after), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _published(tmp: Path, name: str):
    from safetensors.torch import load_file

    d = tmp / "runs" / "sft" / name
    return load_file(str(d / "hf_model" / "model.safetensors")), load_file(str(d / "lora_adapter" / "adapter_model.safetensors"))


@pytest.mark.skipif("peft" not in __import__("tunekit.train.params", fromlist=["SFTParams"]).SFTParams.model_fields,
                    reason="LoRA integration patch not applied (no `peft` parameter)")
def test_engine_lora_two_processes_and_sigkill_resume(tmp_path):
    model = tiny_llama_dir(tmp_path / "model", vocab=96)
    ref = _engine(tmp_path, model, "ref")
    assert ref.returncode == 0, (ref.stdout + ref.stderr)[-3000:]
    two = _engine(tmp_path, model, "two", nproc=2)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    killed = _engine(tmp_path, model, "killed", kill_after=3)
    assert killed.returncode == -9
    resumed = _engine(tmp_path, model, "killed")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "resumed from step_00000002" in resumed.stdout
    want_model, want_adapter = _published(tmp_path, "ref")
    for name in ("two", "killed"):
        got_model, got_adapter = _published(tmp_path, name)
        for want, got in ((want_model, got_model), (want_adapter, got_adapter)):
            assert want.keys() == got.keys()
            for k in want:
                torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=f"{name}: {k}")
