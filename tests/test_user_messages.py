"""Messages that say what happened: CLI version and per-notebook help, closest-name suggestions,
a model folder without a tokenizer, and the evaluation figures' labels."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tunekit.errors import UserError

TUNEKIT = Path(sys.executable).parent / "tunekit"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TUNEKIT), *args], capture_output=True, text=True, timeout=120)


def test_version_names_the_kit_and_its_commit():
    from tunekit import __version__

    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout.startswith(f"tunekit {__version__}") and "(git " in done.stdout


def test_notebooks_run_help_lists_that_notebooks_parameters():
    done = _cli("notebooks", "run", "40_dpo", "--help")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "parameters of 40_dpo" in out
    # name, type, default and help of a parameter, and the section titles of the parameters cell
    assert "  ref_policy_kl_penalty" in out and "float = 0.5" in out and "beta: strength of the KL anchor" in out
    assert "--- DPO loss" in out and "--- run record" in out
    assert "parameters of" not in _cli("notebooks", "run", "--help").stdout
    bad = _cli("notebooks", "run", "nope", "--help")
    assert bad.returncode == 2 and "error: unknown notebook 'nope'" in bad.stderr


@pytest.mark.parametrize("typed, suggested", [
    ("learning_rate", "lr"), ("beta", "ref_policy_kl_penalty"), ("num_train_epochs", "epochs"),
    ("max_seq_lenght", "max_seq_length"), ("sft_weight", "sft_loss_weight"),
])
def test_unknown_parameter_suggests_the_closest_names(typed, suggested):
    from tunekit.train.params import DPOParams

    with pytest.raises(UserError) as exc:
        DPOParams.parse({typed: 1}, source="p.yaml")
    text = str(exc.value)
    assert f"unknown parameter(s) {typed} (did you mean {suggested}" in text
    assert "known:" not in text and "run_name, runs_dir" not in text  # no list of all 50 names


def test_cli_unknown_parameter_points_to_the_help():
    from tunekit.notebooks import declared_parameters, spec

    done = _cli("notebooks", "run", "30_sft", "-p", "learning_rate", "1e-4")
    assert done.returncode == 2
    n = len(declared_parameters(spec("30_sft").ipynb))  # the parameters cell, as --help lists it
    assert ("error: -p: 30_sft has no parameter(s) learning_rate (did you mean lr?) "
            f"(`tunekit notebooks run 30_sft --help` lists its {n} parameters)") in done.stderr


def test_evaluating_a_model_folder_without_a_tokenizer_says_so(tmp_path):
    from tunekit.evaluate.generate import resolve_model_dir
    from tunekit.model import resolve_model

    model = tmp_path / "weights_only"
    model.mkdir()
    src = Path(resolve_model("tiny"))
    for name in ("config.json", "model.safetensors"):
        (model / name).write_bytes((src / name).read_bytes())
    with pytest.raises(UserError) as exc:
        resolve_model_dir(str(model))
    assert f"{model} has no tokenizer" in str(exc.value) and "cp <base model dir>/tokenizer*" in str(exc.value)
    assert "sentencepiece or tiktoken" not in str(exc.value)


def _fake_results(n_samples: int):
    from tunekit.evaluate.evaluation import ModelResult
    from tunekit.evaluate.generate import Generation
    from tunekit.evaluate.scoring import ScoreReport

    cats = {"中1": 0.2, "中2": 0.1, "中3": 0.0, "IA": 0.3, "IIB": 0.1, "IIIC": 0.4}
    curve = [{"k": k, "pass@k": 0.2 + 0.05 * i, "maj@k": 0.2} for i, k in enumerate([1, 2, 4][:n_samples])]
    report = ScoreReport(0.2, cats, {"a": True}, "tunekit")
    return [ModelResult("sft", "runs/sft/x", report, Generation([["x"]], 1, 1.0, "transformers"), [[True]], curve)]


def test_accuracy_plot_uses_the_competition_category_labels_and_draws_them():
    import matplotlib

    matplotlib.use("Agg")
    from tunekit.evaluate.plots import plot_accuracy

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)" for tofu
        fig = plot_accuracy(_fake_results(1))
        fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[:6] == ["中1", "中2", "中3", "IA", "IIB", "IIIC"] and "JH1" not in labels


def test_samples_curve_only_with_more_than_one_sample(tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from tunekit.evaluate.plots import plot_samples_curve, show_samples_curve
    from tunekit.runs import start_run

    assert plot_samples_curve(_fake_results(1)) is None
    run = start_run("evaluate", {"x": 1}, "r", str(tmp_path))
    show_samples_curve(_fake_results(1), run)
    assert "one sample per problem" in capsys.readouterr().out
    assert not (run.dir / "accuracy_vs_samples.png").exists()
    assert plot_samples_curve(_fake_results(3)) is not None
    show_samples_curve(_fake_results(3), run)
    assert (run.dir / "accuracy_vs_samples.png").is_file()
