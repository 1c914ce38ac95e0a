"""The bundled sample data: reproducible from its generator, valid, scorable, eval held out."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "datasets" / "sample"
CATEGORIES = {"中1", "中2", "中3", "IA", "IIB", "IIIC"}
GOLD_KEYS = {"id", "problem", "solution", "category", "unit", "difficulty", "evaluation_method"}


@pytest.fixture(scope="module")
def gen():
    """The generator script imported as a module (it is a standalone stdlib script)."""
    name = "tunekit_sample_generator"
    spec = importlib.util.spec_from_file_location(name, REPO / "datasets" / "generate_sample.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is created
    spec.loader.exec_module(mod)
    return mod


def _rows(rel: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / rel).read_text(encoding="utf-8").splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_reproduces_committed_files_byte_for_byte(gen, tmp_path):
    counts = gen.generate(tmp_path)
    fresh, committed = _files(tmp_path), _files(SAMPLE)
    assert sorted(fresh) == sorted(committed), "file list differs: regenerate datasets/sample"
    for name in fresh:
        assert fresh[name] == committed[name], f"{name} differs from the generator's output: regenerate"
    assert counts == {"tuning/train/math_drill.jsonl": 1200, "tuning/train/math_chat.jsonl": 200,
                      "preference/train/math_pref.jsonl": 800, "eval/dev.jsonl": 90}


def test_two_runs_are_identical_and_seed_matters(gen, tmp_path):
    gen.generate(tmp_path / "a")
    gen.generate(tmp_path / "b")
    gen.generate(tmp_path / "c", seed=gen.SEED + 1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a")["eval/dev.jsonl"] != _files(tmp_path / "c")["eval/dev.jsonl"]


@pytest.mark.parametrize("rel,kind", [("tuning/train/math_drill.jsonl", "sft"),
                                      ("tuning/train/math_chat.jsonl", "sft"),
                                      ("preference/train/math_pref.jsonl", "dpo")])
def test_training_files_pass_the_kits_validator(rel, kind):
    from tunekit.data.validate import validate_file

    report = validate_file(SAMPLE / rel, kind)
    n = len(_rows(rel))
    assert report.records == n and report.kept == n and report.skipped == 0, report.problems
    # No line is a copy of another (the validator warns on those: they are trained twice).
    assert not [p for p in report.problems if "duplicate" in str(p)], report.problems[:3]


def test_no_sft_line_repeats_across_the_two_sft_files():
    from tunekit.data.validate import validate_files

    reports = validate_files([(SAMPLE / "tuning/train/math_drill.jsonl", "sft"),
                              (SAMPLE / "tuning/train/math_chat.jsonl", "sft")])
    assert not [p for r in reports for p in r.problems if "duplicate" in str(p)]


def test_sft_structure_multiturn_and_unanswered_tail():
    chat = _rows("tuning/train/math_chat.jsonl")
    for row in _rows("tuning/train/math_drill.jsonl") + chat:
        msgs = row["messages"]
        assert msgs[0]["role"] == "system" and len(msgs) >= 3
        assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * ((len(msgs) - 1) // 2) + \
            ["user"] * ((len(msgs) - 1) % 2)
    assert sum(len(r["messages"]) >= 5 for r in chat) >= 60           # multi-turn chats
    assert len({r["messages"][0]["content"] for r in chat}) == 4       # varied system prompts
    assert sum(r["messages"][-1]["role"] == "user" for r in chat) == 4  # ignored unanswered tails


def test_dpo_pairs_disagree_and_mostly_use_the_eval_prompt(gen):
    rows = _rows("preference/train/math_pref.jsonl")
    for row in rows:
        assert row["messages"][0]["role"] == "system" and row["messages"][-1]["role"] == "user"
        assert row["chosen_response"] != row["rejected_response"]
    assert sum(len(r["messages"]) == 4 for r in rows) == 80
    head = gen.PROMPT_WRAPPERS["official"].split("{question}")[0]
    official = sum(r["messages"][-1]["content"].startswith(head) for r in rows)
    assert 0.65 < official / len(rows) < 0.85  # 3 in 4 ask for the answer only, as the evaluation does


def test_eval_file_is_in_the_competition_gold_format():
    rows = _rows("eval/dev.jsonl")
    assert len({r["id"] for r in rows}) == len(rows) == 90
    for r in rows:
        assert set(r) <= GOLD_KEYS and {"id", "problem", "solution", "category", "unit"} <= set(r)
        assert r["category"] in CATEGORIES
        assert isinstance(r["solution"], str) or (isinstance(r["solution"], list) and r["solution"])
        assert r.get("evaluation_method", "soft") in {"soft", "strict", "complex", "complex-strict"}
    assert {r["category"] for r in rows} == CATEGORIES
    assert any(isinstance(r["solution"], list) for r in rows)
    assert any("evaluation_method" in r for r in rows)


def test_eval_problems_never_appear_in_training_data(gen):
    eval_problems = {r["problem"] for r in _rows("eval/dev.jsonl")}
    wrapped = {style: w.format(question="\0") for style, w in gen.PROMPT_WRAPPERS.items()}

    def unwrap(user: str) -> str:
        for w in wrapped.values():
            head, tail = w.split("\0")
            if user.startswith(head) and user.endswith(tail):
                return user[len(head):len(user) - len(tail)]
        for prefix in gen.FOLLOW_UP_PREFIXES:
            if user.startswith(prefix + "\n"):
                return user[len(prefix) + 1:]
        return user

    seen = 0
    for rel in ("tuning/train/math_drill.jsonl", "tuning/train/math_chat.jsonl",
                "preference/train/math_pref.jsonl"):
        for row in _rows(rel):
            for m in row["messages"]:
                if m["role"] == "user":
                    seen += 1
                    problem = unwrap(m["content"])
                    assert problem not in eval_problems, f"{rel}: eval problem used in training: {problem!r}"
    assert seen > 1700


def test_prompt_wrappers_and_system_match_the_kit(gen):
    from tunekit.template import DEFAULT_SYSTEM
    from tunekit.evaluate.prompts import PROMPT_STYLES

    # If the evaluator's prompts or the template's default system change, update the generator and
    # regenerate, so that training still sees what evaluation sends.
    assert gen.PROMPT_WRAPPERS == PROMPT_STYLES
    assert gen.DEFAULT_SYSTEM == DEFAULT_SYSTEM


def test_each_gold_accepts_the_templates_answer_and_rejects_the_wrong_one(gen):
    from tunekit.evaluate.verify import check

    problems = gen.make_eval_problems(gen.random.Random(f"{gen.SEED}-eval"))
    rows = _rows("eval/dev.jsonl")
    assert [gen.eval_row(n, p) for n, p in enumerate(problems, 1)] == rows
    for p, row in zip(problems, rows):
        method = row.get("evaluation_method", "soft")
        for style in ("bare", "official", "cot_boxed"):
            assert check(p.response(style=style), row["solution"], method).correct, (row["id"], style)
            assert not check(p.response(p.wrong, style=style), row["solution"], method).correct, (row["id"], style)


@pytest.mark.slow
def test_tiny_model_learns_the_answer_format_in_a_few_hundred_steps():
    """The design goal in miniature: a short plain SFT loop on the drill file teaches the tiny model
    to answer eval prompts (evaluator's default style, greedy, 32 tokens) with a scorable \\boxed{}."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.data.encode import probe, sft_ids
    from tunekit.evaluate.prompts import build_messages, prompt_ids
    from tunekit.evaluate.verify import extract_answer
    from tunekit.model import tiny_model_dir

    torch.manual_seed(0)
    torch.set_num_threads(1)
    d = tiny_model_dir()
    tok, model = AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d)
    info = probe(tok)
    data = [sft_ids(r["messages"], tok, info) for r in _rows("tuning/train/math_drill.jsonl")]
    problems = [r["problem"] for r in _rows("eval/dev.jsonl")][::3]

    def boxed_rate() -> float:
        model.eval()
        hits = 0
        with torch.no_grad():
            for p in problems:
                ids = prompt_ids(tok, build_messages(p, "official"))
                out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, pad_token_id=4)
                text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
                hits += "\\boxed{" in text and bool(extract_answer(text))
        model.train()
        return hits / len(problems)

    before = boxed_rate()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng, losses = random.Random(0), []
    for step in range(300):
        batch = rng.sample(data, 16)
        width = max(len(ids) for ids, _ in batch)
        x = torch.full((16, width), 4)
        y = torch.full((16, width), -100)
        for i, (ids, mask) in enumerate(batch):
            x[i, :len(ids)] = torch.tensor(ids)
            y[i, :len(ids)] = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
        loss = model(input_ids=x, attention_mask=(x != 4).long(), labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = boxed_rate()
    assert sum(losses[-20:]) / 20 < sum(losses[:5]) / 5 / 4, losses[::50]
    assert before <= 0.1 and after >= 0.8, (before, after)
