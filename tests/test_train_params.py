"""Bad params and layouts fail before any work with one clear sentence; launcher environment mapping."""
from __future__ import annotations

import time

import pytest

from tunekit.errors import UserError
from tunekit.train.distributed import build_command, failure_summary, map_launcher_env, pbs_hosts
from tunekit.train.params import DPOParams, SFTParams
from tunekit.train.plan import check_layout, job_end_time, make_deadline, make_plan, parse_hms


def test_defaults_are_valid_and_resume_may_change_is_narrow():
    cfg = SFTParams()
    assert cfg.stage == "sft" and cfg.model == "tiny"
    # numerics-relevant fields must never be silently changed on resume
    for name in ("lr", "global_batch_size", "seed", "max_seq_length", "epochs", "datasets"):
        assert name not in SFTParams.RESUME_MAY_CHANGE


@pytest.mark.parametrize("values, fragment", [
    ({"global_batch_size": 10, "micro_batch_size": 4}, "global_batch_size 10 is not a multiple of micro_batch_size 4"),
    ({"lr": 0.0}, "parameter 'lr' must be > 0 (got 0.0)"),
    ({"min_lr": 1.0, "lr": 0.1}, "min_lr must be between 0 and lr"),
    ({"wandb": "maybe"}, "parameter 'wandb' must be one of disabled|offline|online (got 'maybe')"),
    ({"publish": "last"}, "parameter 'publish' must be one of best|final"),
    ({"max_steps": 0}, "max_steps must be -1"),
    ({"max_steps": -2}, "parameter 'max_steps' must be >= -1"),
    ({"epochs": 0}, "set epochs >= 1 or max_steps > 0"),
    ({"precision": "fp16"}, "parameter 'precision' must be one of auto|bf16|fp32"),
    ({"adam_beta2": 1.0}, "parameter 'adam_beta2' must be < 1"),
    ({"keep_top_k": 0}, "publish='best' needs keep_top_k >= 1"),
    ({"lora_target_modules": "attn"}, "parameter 'lora_target_modules' unknown module 'attn'"),
    ({"datasets": {"math_drill": {"upsampling_factor": 0}}},
     "parameter 'datasets.math_drill.upsampling_factor' must be >= 1"),
    ({"dev_split": "tail"}, "parameter 'dev_split' must be one of head|hash"),
    ({"model": " "}, "model must name a model"),
])
def test_bad_params_one_sentence(values, fragment):
    with pytest.raises(UserError) as err:
        SFTParams.parse(values)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg and "Traceback" not in msg
    assert msg.startswith("parameters: ")


@pytest.mark.parametrize("values, fragment", [
    ({"preference_loss": "kto"}, "parameter 'preference_loss' must be one of dpo|ipo|rpo_sq|rpo_bwd_kl|rpo_fwd_kl"),
    ({"ref_policy_kl_penalty": 0.0}, "parameter 'ref_policy_kl_penalty' must be > 0"),
    ({"label_smoothing": 0.5}, "parameter 'label_smoothing' must be < 0.5"),
    ({"label_smoothing": 0.1, "preference_loss": "ipo"}, "label_smoothing applies to preference_loss=dpo only"),
    ({"preference_loss_weight": 0.0, "sft_loss_weight": 0.0}, "cannot both be 0"),
    ({"reference": "base"}, "parameter 'reference' must be one of cached|live"),
    ({"attn_implementation": "flash_attention_2"}, "parameter 'attn_implementation' must be one of "
                                                   "auto|varlen|sdpa|eager"),
    ({"dpo_overlong": "cut"}, "parameter 'dpo_overlong' must be one of drop|truncate_prompt"),
])
def test_bad_dpo_params_one_sentence(values, fragment):
    with pytest.raises(UserError) as err:
        DPOParams.parse(values)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_every_problem_is_reported_once_per_line():
    with pytest.raises(UserError) as err:
        SFTParams.parse({"lr": -1.0, "wandb": "x", "seed": "1"})
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("parameters: parameter '") for line in lines)


def test_stage_defaults_keep_the_shared_declaration():
    """A stage restates only defaults (and help): type and limits stay those of the shared group."""
    from tunekit.data.params import DataParams
    from tunekit.train.params import TrainParams

    for cls in (SFTParams, DPOParams):
        for name, field in cls.model_fields.items():
            for base in (DataParams, TrainParams):
                if name in base.model_fields:
                    shared = base.model_fields[name]
                    assert field.annotation == shared.annotation, (cls.__name__, name)
                    assert field.metadata == shared.metadata, (cls.__name__, name)
    assert DPOParams().max_seq_length == 256 and SFTParams().max_seq_length == 512


def test_wrong_types_and_unknown_names_are_rejected():
    with pytest.raises(UserError, match="unknown parameter"):
        SFTParams.parse({"learning_rate": 1e-5})
    with pytest.raises(UserError, match="parameter 'global_batch_size'"):
        SFTParams.parse({"global_batch_size": "64"})


def test_layout_checks_need_world_and_model():
    cfg = SFTParams(global_batch_size=8, micro_batch_size=4, max_seq_length=256)
    check_layout(cfg, 2, 4096)  # 8 = 4 x 2: fine
    with pytest.raises(UserError) as err:
        check_layout(cfg, 3, 4096)
    assert "not divisible by micro_batch_size 4 x 3 data-parallel process(es) = 12" in str(err.value)
    with pytest.raises(UserError, match="exceeds the model's limit of 128"):
        check_layout(cfg, 1, 128)


def test_plan_reports_too_little_data_and_unused_tail():
    cfg = SFTParams(global_batch_size=8, micro_batch_size=4, epochs=2)
    with pytest.raises(UserError, match="only 5 packed training sequence"):
        make_plan(cfg, 1, 5, 1)
    plan = make_plan(cfg, 2, 21, 3)
    assert plan.total_steps == 5 and plan.grad_accum == 1 and plan.unused_sequences == 2


def test_ompi_and_pbs_mapping(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("hostA\nhostA\nhostB\nhostB\n")
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
           "PBS_NODEFILE": str(nodefile), "PBS_JOBID": "1234.pbs1"}
    added = map_launcher_env(env)
    assert env["RANK"] == "3" and env["LOCAL_RANK"] == "1" and env["WORLD_SIZE"] == "4"
    assert env["MASTER_ADDR"] == "hostA" and env["MASTER_PORT"] == str(29500 + 1234)
    assert set(added) >= {"RANK", "WORLD_SIZE", "MASTER_ADDR"}
    assert pbs_hosts(str(nodefile)) == ["hostA", "hostB"]
    # torchrun's own variables are never overridden
    env2 = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1", "OMPI_COMM_WORLD_RANK": "5"}
    map_launcher_env(env2)
    assert env2["RANK"] == "0" and env2["MASTER_ADDR"] == "x"


def test_launch_commands(tmp_path, monkeypatch):
    cmd, extra = build_command("sft", tmp_path, 2, [], python="py")
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd
    assert cmd[-6:] == ["-m", "tunekit.cli", "train", "sft", "--run-dir", str(tmp_path)] and extra == {}
    monkeypatch.setenv("PATH", str(tmp_path) + ":/usr/bin:/bin")
    (tmp_path / "mpirun").write_text("#!/bin/sh\n")
    (tmp_path / "mpirun").chmod(0o755)
    monkeypatch.setenv("WANDB_API_KEY", "secret-value")
    cmd, extra = build_command("sft", tmp_path, 8, ["h1", "h2"], python="py")
    assert cmd[:5] == ["mpirun", "-np", "16", "--npernode", "8"] and "h1:8,h2:8" in cmd
    assert extra["MASTER_ADDR"] == "h1" and "WANDB_API_KEY" in cmd
    assert not any("secret-value" in c for c in cmd)  # forwarded by name only


def test_deadline_sources(monkeypatch):
    assert parse_hms("01:30:00") == 5400 and parse_hms("90") == 90
    assert job_end_time({})[0] is None
    now = time.time()
    end, src = job_end_time({"TUNEKIT_DEADLINE": str(now + 3600)})
    assert src == "TUNEKIT_DEADLINE" and end == pytest.approx(now + 3600)
    d = make_deadline(0, 10, start=now, environ={"TUNEKIT_DEADLINE": str(now + 3600)})
    assert d.at == pytest.approx(now + 3000)
    d = make_deadline(5, 10, start=now, environ={"TUNEKIT_DEADLINE": str(now + 3600)})
    assert d.at == pytest.approx(now + 300) and "max_train_minutes" in d.source
    assert make_deadline(0, 10, start=now, environ={}).at is None


def test_cli_reports_bad_params_in_one_line(tmp_path, capsys):
    from tunekit.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("global_batch_size: 6\nmicro_batch_size: 4\n")
    assert main(["train", "sft", "--params", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a multiple of micro_batch_size 4" in err and "\n" not in err
    assert main(["train", "sft", "--params", str(tmp_path / "missing.yaml")]) == 2
    assert "params file not found" in capsys.readouterr().err


def test_worker_failure_summary_picks_the_cause():
    lines = ["noise", "[rank0]: Traceback (most recent call last):",
             "[rank0]: RuntimeError: safetensors refused the state dict", "[rank1]: RuntimeError: peer closed",
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "  error_file: <N/A>"]
    assert failure_summary(lines) == "RuntimeError: safetensors refused the state dict (rank0)"
    assert failure_summary(["x", "error: layout: global batch 6 is bad"]) == "layout: global batch 6 is bad"


def test_a_written_result_survives_a_worker_abort_at_teardown(tmp_path, monkeypatch, capsys):
    """gloo can abort a rank after the run finished; the launcher then reports it complete, with a note."""
    import sys

    from tunekit.train import distributed
    from tunekit.train.engine import result_written_since

    result = tmp_path / "train_result.json"

    def done(t0):  # what run_prepared passes
        return result_written_since(tmp_path, t0)

    write_then_abort = f"import os; open({str(result)!r}, 'w').write('{{}}'); os.abort()"
    monkeypatch.setattr(distributed, "world_plan", lambda n: (2, []))
    monkeypatch.setattr(distributed, "build_command", lambda *a, **k: ([sys.executable, "-c", write_then_abort], {}))
    distributed.spawn_workers("sft", tmp_path, 2, done)
    assert "wrote their result and then exited with code" in capsys.readouterr().out
    # An abort before the result exists is a failure, reported as one.
    result.unlink()
    monkeypatch.setattr(distributed, "build_command",
                        lambda *a, **k: ([sys.executable, "-c", "import os; os.abort()"], {}))
    with pytest.raises(UserError, match="training processes failed"):
        distributed.spawn_workers("sft", tmp_path, 2, done)
