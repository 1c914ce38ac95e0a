"""Generation through the chat template, batching, sampling, the evaluation pipeline, run records,
the submission helper and the GPU-id guard, on a tiny random LLaMA built here (CPU, fp32)."""
from __future__ import annotations

import json

import pytest

from tunekit.errors import UserError
from tunekit.evaluate import evaluation
from tunekit.evaluate.generate import Decoding, Generation, generate_answers, load_model
from tunekit.evaluate.prompts import OFFICIAL_PROMPT, build_messages, prompt_ids, render_prompt
from tunekit.evaluate.records import load_predictions, read_jsonl

PROBLEMS = ["1+1は？", "方程式 3x = 18 を解きなさい。", "$\\frac{1}{2} + \\frac{1}{3}$ を計算せよ。",
            "-30 の絶対値を答えなさい。", "x = 1 のとき 4x + 4 の値", "半径 2 の円の面積"]
GOLD = [{"id": f"q{i}", "problem": p, "solution": s, "category": c, "unit": "u"}
        for i, (p, s, c) in enumerate(zip(PROBLEMS, ["2", "6", "$$\\frac{5}{6}$$", "30", "8", "$4\\pi$"],
                                          ["中1", "中1", "中1", "中2", "中2", "IA"]))]


def _chat_template() -> str:
    try:
        from tunekit.template import CHAT_TEMPLATE
        return CHAT_TEMPLATE
    except ImportError:  # the data area not built yet: the same shape, spelled out
        return ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                "{{ '\n\n### 指示:\n' + m['content'] }}{% else %}{{ '\n\n### 応答:\n' + m['content'] + eos_token }}"
                "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '\n\n### 応答:\n' }}{% endif %}")


def build_tiny(path, chat_template=True):
    """A byte-level tokenizer (llm-jp special ids) + a 2-layer LLaMA with hidden size 32."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(["<unk>", "<|bos|>", "<|eos|>", "<mask>", "<|pad|>"])}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>",
                                  unk_token="<unk>", pad_token="<|pad|>")
    if chat_template:
        tok.chat_template = _chat_template()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=4)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def loaded(tiny):
    import torch

    torch.set_num_threads(1)
    return load_model(tiny, device="cpu")


# ------------------------------------------------------------------ prompts
def test_prompt_is_the_submission_prompt_through_the_chat_template(loaded):
    model, tok = loaded
    messages = build_messages(PROBLEMS[1], "official")
    assert messages == [{"role": "user", "content": OFFICIAL_PROMPT.format(question=PROBLEMS[1])}]
    ids = prompt_ids(tok, messages)
    direct = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ids == list(direct["input_ids"] if hasattr(direct, "keys") else direct)
    text = render_prompt(tok, messages)
    assert text.startswith("<|bos|>") and text.endswith("### 応答:\n")
    assert "問題に対する解答のみを出力してください。" in text and PROBLEMS[1] in text
    assert ids.count(tok.bos_token_id) == 1   # no second bos from add_special_tokens


@pytest.mark.parametrize("style", ["official", "cot_boxed"])
def test_eval_prompt_is_the_training_prompt_on_the_kit_tiny_model(style):
    """The submission path (user message only) gives the ids training uses for that problem with
    the default system sentence: evaluation measures the prompt format the model was tuned on."""
    from transformers import AutoTokenizer

    from tunekit.data.encode import prompt_ids as training_prompt_ids
    from tunekit.template import DEFAULT_SYSTEM
    from tunekit.evaluate.records import load_gold
    from tunekit.model import resolve_model
    from tunekit.paths import repo_root

    tok = AutoTokenizer.from_pretrained(str(resolve_model("tiny")))
    for g in load_gold(repo_root() / "datasets" / "sample" / "eval")[::9]:
        messages = build_messages(g["problem"], style)
        assert prompt_ids(tok, messages) == training_prompt_ids(
            [{"role": "system", "content": DEFAULT_SYSTEM}] + messages, tok), g["id"]


def test_cot_prompt_asks_for_one_boxed_answer():
    text = build_messages("1+1", "cot_boxed")[0]["content"]
    assert "\\boxed{}" in text and "1+1" in text
    with pytest.raises(UserError, match="prompt_style"):
        build_messages("1+1", "chatty")


def test_tokenizer_without_chat_template_is_refused(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(build_tiny(tmp_path / "m", chat_template=False)))
    with pytest.raises(UserError, match="no chat template"):
        prompt_ids(tok, build_messages("1+1"))


# ------------------------------------------------------------------ decoding
def test_batched_greedy_equals_one_prompt_at_a_time(tiny, loaded):
    one = generate_answers(tiny, PROBLEMS, decoding=Decoding(max_new_tokens=12, batch_size=1),
                           backend="transformers", progress=False, loaded=loaded)
    batched = generate_answers(tiny, PROBLEMS, decoding=Decoding(max_new_tokens=12, batch_size=4),
                               backend="transformers", progress=False, loaded=loaded)
    assert one.outputs == batched.outputs
    assert all(len(o) == 1 for o in one.outputs)
    assert 0 < one.new_tokens <= 12 * len(PROBLEMS) and one.new_tokens == batched.new_tokens


def test_sampling_gives_n_samples_reproducibly(tiny, loaded):
    dec = Decoding(max_new_tokens=8, temperature=1.0, n_samples=3, batch_size=2, seed=5)
    a = generate_answers(tiny, PROBLEMS[:4], decoding=dec, backend="transformers", progress=False, loaded=loaded)
    b = generate_answers(tiny, PROBLEMS[:4], decoding=dec, backend="transformers", progress=False, loaded=loaded)
    assert [len(o) for o in a.outputs] == [3, 3, 3, 3]
    assert a.outputs == b.outputs
    other = Decoding(max_new_tokens=8, temperature=1.0, n_samples=3, batch_size=2, seed=6)
    c = generate_answers(tiny, PROBLEMS[:4], decoding=other, backend="transformers", progress=False, loaded=loaded)
    assert c.outputs != a.outputs
    assert len({s for o in a.outputs for s in o}) > 1   # sampling, not greedy


@pytest.mark.parametrize("kwargs, why", [
    (dict(n_samples=4), "temperature 0"), (dict(max_new_tokens=0), ">= 1"),
    (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"),
])
def test_decoding_rejects_inconsistent_settings(kwargs, why):
    with pytest.raises(UserError, match=why):
        Decoding(**kwargs)


def test_unknown_backend_is_refused(tiny):
    with pytest.raises(UserError, match="backend"):
        generate_answers(tiny, PROBLEMS[:1], backend="tgi")


# ------------------------------------------------------------------ the evaluation pipeline
def test_evaluate_model_writes_files_in_the_competition_format(tiny, loaded, tmp_path, monkeypatch):
    from tunekit.evaluate import generate as gen_mod

    monkeypatch.setattr(gen_mod, "load_model", lambda *a, **k: loaded)
    res = evaluation.evaluate_model(str(tiny), GOLD, tmp_path, decoding=Decoding(max_new_tokens=6),
                                    backend="transformers", scorer="tunekit", progress=False)
    preds = load_predictions(res.folder / "predictions.jsonl")
    assert preds.rejected == [] and list(preds.by_id) == [g["id"] for g in GOLD]
    assert all(set(r) == {"id", "problem", "solution", "category", "unit", "output"} for r in preds.by_id.values())
    scores = json.loads((res.folder / "scores.json").read_text(encoding="utf-8"))
    assert set(scores["detailed_results"]) == {g["id"] for g in GOLD}
    assert scores["overall_accuracy"] == res.report.overall_accuracy
    assert len(read_jsonl(res.folder / "samples.jsonl")) == len(GOLD)
    assert res.curve[0]["k"] == 1


def _fake_generation(samples_per_problem):
    def fake(spec, problems, style, decoding, backend, progress):
        return Generation([list(samples_per_problem[p]) for p in problems], 10, 1.0, "fake")
    return fake


def test_pipeline_votes_scores_and_compares(tmp_path, monkeypatch):
    # Problem 0: two right answers in different spellings beat one wrong -> the vote is right.
    # Problem 1: every sample wrong. Problem 2: right only in the last sample (pass@3 yes, maj no).
    gold = GOLD[:3]
    samples = {gold[0]["problem"]: ["$3$", r"\boxed{2}", "答え：2"],
               gold[1]["problem"]: ["$5$", "$5$", "$7$"],
               gold[2]["problem"]: ["$1$", "$1$", r"$\frac{5}{6}$"]}
    monkeypatch.setattr(evaluation, "generate_answers", _fake_generation(samples))
    dec = Decoding(temperature=0.7, n_samples=3)
    res = evaluation.evaluate_models(["tiny", "tiny"], gold, tmp_path, decoding=dec, scorer="tunekit",
                                     progress=False)
    r = res[0]
    assert r.report.detailed_results == {"q0": True, "q1": False, "q2": False}
    assert load_predictions(r.folder / "predictions.jsonl").by_id["q0"]["output"] == r"\boxed{2}"
    assert r.sample_correct == [[False, True, True], [False, False, False], [False, False, True]]
    curve = {row["k"]: row for row in r.curve}
    assert curve[1]["maj@k"] == 0.0 and curve[3]["maj@k"] == pytest.approx(1 / 3)
    assert curve[1]["pass@k"] == pytest.approx((2 / 3 + 0 + 1 / 3) / 3)
    assert curve[3]["pass@k"] == pytest.approx(2 / 3)
    assert [x.label for x in res] == ["tiny", "tiny'"]   # same spec twice: distinct labels/folders
    table = evaluation.comparison_table(res)
    assert table.loc["tiny", "accuracy"] == pytest.approx(1 / 3) and table.loc["tiny", "maj@3"] == pytest.approx(1 / 3)
    cats = evaluation.category_table(res)
    assert cats.loc["中1", "tiny"] == pytest.approx(1 / 3) and cats.loc["Overall", "tiny'"] == pytest.approx(1 / 3)
    assert evaluation.summary(res)["models"]["tiny"]["accuracy"] == pytest.approx(1 / 3)
    assert evaluation.check_summary(res) == {
        "accuracy": {"tiny": 0.333, "tiny'": 0.333}, "categories": 1, "models": 2,
        "predictions_valid": True, "problems": 3, "trained_beats_base": False}   # equal is not better
    assert evaluation.check_summary(res[:1])["trained_beats_base"] is None
    examples = evaluation.examples_table(r, gold, n=2)
    assert list(examples.index) == ["q0", "q1"] and examples.loc["q0", "rule"] == "math-verify"


def test_plots_draw_for_several_models(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from tunekit.evaluate.plots import plot_accuracy, plot_samples_curve

    samples = {g["problem"]: ["$2$", "$6$"] for g in GOLD}
    monkeypatch.setattr(evaluation, "generate_answers", _fake_generation(samples))
    res = evaluation.evaluate_models(["a", "b"], GOLD, tmp_path, decoding=Decoding(temperature=1.0, n_samples=2),
                                     scorer="tunekit", progress=False)
    fig = plot_accuracy(res)
    assert len(fig.axes[0].patches) == 2 * 4   # 2 models x (3 categories + Overall)
    assert len(plot_samples_curve(res).axes[0].lines) == 4


# ------------------------------------------------------------------ run records
def test_training_metrics_read_tolerantly(tmp_path):
    from tunekit.evaluate.runinfo import model_label, run_dir_of, training_metrics

    sft = tmp_path / "runs" / "sft" / "demo-1"
    (sft / "hf_model").mkdir(parents=True)
    (sft / "params.json").write_text("{}")
    (sft / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 3.0}, {"step": 2, "val_loss": 2.5}, {"step": 4, "val_loss": 1.9},
        {"step": 6, "val_loss": 2.0}]) + "\n{torn")
    dpo = tmp_path / "runs" / "dpo" / "demo-1"
    dpo.mkdir(parents=True)
    (dpo / "params.json").write_text("{}")
    (dpo / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "rewards/accuracy": 0.4, "val_reward_accuracy": 0.5},
        {"step": 2, "rewards/accuracy": 0.7, "val_reward_accuracy": 0.75, "val_reward_margin": 0.2}]))
    assert run_dir_of(sft / "hf_model") == sft and run_dir_of("tiny") is None
    assert model_label(sft / "hf_model") == "sft/demo-1" and model_label(str(dpo)) == "dpo/demo-1"
    assert training_metrics(sft) == {"stage": "sft", "val_loss_first": 2.5, "val_loss_last": 2.0,
                                     "val_loss_best": 1.9}
    assert training_metrics(dpo) == {"stage": "dpo", "reward_accuracy": 0.7, "val_reward_accuracy": 0.75,
                                     "val_reward_margin": 0.2}
    assert training_metrics("tiny") == {}


# ------------------------------------------------------------------ submission helper
def test_prepare_submission_and_smoke_test(tiny, tmp_path, monkeypatch):
    from tunekit.evaluate.submission import MANIFEST, prepare_submission, smoke_test

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    src = tmp_path / "src"
    import shutil

    shutil.copytree(tiny, src)
    (src / "generation_config.json").unlink()
    (src / "optimizer.pt").write_bytes(b"x")   # training leftovers stay behind
    # Saved by transformers 5: a class the submission image's transformers 4.57.0 does not have.
    assert json.loads((src / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    info = prepare_submission(src, tmp_path / "sub")
    files = set(info["files"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", MANIFEST} <= files
    assert "optimizer.pt" not in files
    # Rewritten portable, then loaded in transformers 4.57.0 with the same ids (real side env).
    assert json.loads((tmp_path / "sub" / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "PreTrainedTokenizerFast"
    assert info["compat_check"] == {"skipped": False, "transformers": "4.57.0", "identical": True}
    assert json.loads((tmp_path / "sub" / MANIFEST).read_text())["compat_check"]["identical"] is True
    gen_cfg = json.loads((tmp_path / "sub" / "generation_config.json").read_text())
    assert gen_cfg["eos_token_id"] == 2 and "temperature" not in gen_cfg
    with pytest.raises(UserError, match="already exists"):
        prepare_submission(src, tmp_path / "sub")

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": g["id"], "category": g["category"], "unit": "u",
                                            "problem": g["problem"], "solution": g["solution"]},
                                           ensure_ascii=False) + "\n" for g in GOLD[:3]), encoding="utf-8")
    result = smoke_test(tmp_path / "sub", problems, tmp_path / "out.jsonl", max_new_tokens=4)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ["q0", "q1", "q2"] and all(isinstance(r["output"], str) for r in out)
    assert out[0]["problem"] == GOLD[0]["problem"]   # same records, plus output
    assert result["records"] == 3 and result["keys_the_scorer_rejects"] == []


def test_prepare_submission_without_the_check_environment(tiny, tmp_path, monkeypatch):
    from tunekit.evaluate.submission import MANIFEST, prepare_submission
    from tunekit.model import compat

    def offline(name, log=None):
        raise compat.SideEnvUnavailable("cannot build the transformers 4.57.0 check environment (pip failed)")

    monkeypatch.setattr(compat, "side_python", offline)
    with pytest.raises(UserError, match="pass --skip-compat-check"):
        prepare_submission(tiny, tmp_path / "sub", log=lambda *a: None)
    assert not (tmp_path / "sub").exists()          # nothing half-prepared is left behind
    info = prepare_submission(tiny, tmp_path / "sub", skip_compat_check=True, log=lambda *a: None)
    assert info["compat_check"] == {"skipped": True}
    assert json.loads((tmp_path / "sub" / MANIFEST).read_text())["compat_check"] == {"skipped": True}


def test_prepare_submission_refuses_a_model_without_chat_template(tmp_path):
    from tunekit.evaluate.submission import prepare_submission

    src = build_tiny(tmp_path / "nochat", chat_template=False)
    with pytest.raises(UserError, match="no chat template"):
        prepare_submission(src, tmp_path / "sub")


# ------------------------------------------------------------------ GPU id guard
@pytest.mark.parametrize("value", [None, "", "0", "0,1", " 2 , 3 "])
def test_numeric_cuda_visible_devices_pass(value):
    from tunekit.evaluate.gpu_env import check_cuda_visible_devices

    check_cuda_visible_devices({} if value is None else {"CUDA_VISIBLE_DEVICES": value})


@pytest.mark.parametrize("value", ["GPU-3f1c2d4e-aaaa-bbbb-cccc-0123456789ab", "0,MIG-1234"])
def test_uuid_cuda_visible_devices_are_refused(value):
    from tunekit.evaluate.gpu_env import check_cuda_visible_devices

    with pytest.raises(UserError, match="numeric GPU ids"):
        check_cuda_visible_devices({"CUDA_VISIBLE_DEVICES": value})


def test_uuids_map_to_numeric_ids():
    from tunekit.evaluate.gpu_env import numeric_devices

    mapping = {"GPU-aaa": "0", "GPU-bbb": "1"}
    assert numeric_devices("GPU-bbb,GPU-aaa", mapping) == "1,0"
    assert numeric_devices("GPU-ccc", mapping) is None


# ------------------------------------------------------------------ parameters and CLI
def test_eval_params_reject_bad_values():
    from tunekit.evaluate.params import EvalParams

    assert EvalParams().models == ["tiny"]
    for bad in ({"backend": "tgi"}, {"scorer": "x"}, {"prompt_style": "x"}, {"models": []},
                {"max_problems": -1}, {"n_samples": 2}):
        with pytest.raises(UserError):
            EvalParams.parse(bad)


def test_cli_generate_writes_predictions_then_score_reads_them(tiny, tmp_path, capsys):
    from tunekit.cli import main as cli

    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in GOLD), encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    assert cli(["eval", "generate", str(tiny), str(gold), "-o", str(out), "--max-new-tokens", "4",
                "--backend", "transformers", "--max-problems", "2"]) == 0
    assert [r["id"] for r in read_jsonl(out)] == ["q0", "q1"]
    assert cli(["eval", "score", str(out), str(gold), "--scorer", "tunekit", "-q"]) == 0
    assert "4 gold problem(s) without a prediction" in capsys.readouterr().out
