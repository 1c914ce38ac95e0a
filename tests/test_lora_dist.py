"""LoRA under FSDP2 with 2 gloo processes (torchrun): adapters sharded in the same units as their
frozen base weights train exactly like in 1 process, and the base stays bit-identical."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_worker, tiny_llama_dir

pytestmark = pytest.mark.slow

# One rank of a data-parallel LoRA run over a fixed global batch of 4 sequences: each rank takes
# its share, the loss is normalised by the GLOBAL token count times world size (FSDP averages
# gradients over ranks), 3 AdamW steps, then rank 0 saves the gathered full weights.
WORKER = r'''
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from helpers import LORA_SPEC, training_model
from tunekit.train.distributed import exit_worker, shutdown
from tunekit.train.engine import build_optimizer
from tunekit.train.publish import gather_full_state_dict
from types import SimpleNamespace
model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
model, env = training_model(model_dir, LORA_SPEC)
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
shutdown(clean=True)  # tear down together, then leave as the kit's workers do
exit_worker(0)
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
def _engine(tmp: Path, model: Path, name: str, nproc: int = 1, kill_after: int = 0):
    """The synthetic-data SFT rank with `peft: lora` (tests/helpers.py); optionally SIGKILLed after step N."""
    import yaml

    params = tmp / f"{name}.yaml"
    params.write_text(yaml.safe_dump(dict(
        max_seq_length=64, global_batch_size=8, micro_batch_size=2, max_steps=6, lr=0.02, min_lr=0.002,
        warmup_steps=1, constant_steps=1, val_interval=3, save_interval=2, publish="final", seed=5,
        peft="lora", lora_rank=4, lora_alpha=8.0, lora_target_modules="attention,mlp_fc2",
        run_name=name, runs_dir=str(tmp / "runs"))))
    args = ["sft", "--params", str(params), "--model-dir", str(model), "--n-train", "80", "--n-dev", "20"]
    if kill_after:
        args += ["--kill-after-step", str(kill_after)]
    return run_worker(args, nproc=nproc, timeout=300)


def _published(tmp: Path, name: str):
    from safetensors.torch import load_file

    d = tmp / "runs" / "sft" / name
    return (load_file(str(d / "hf_model" / "model.safetensors")),
            load_file(str(d / "lora_adapter" / "adapter_model.safetensors")))


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
