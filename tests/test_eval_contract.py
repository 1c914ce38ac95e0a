"""The competition's file contract: gold/prediction lines, rejected lines, missing predictions,
the output JSON, and `tunekit eval score` (tunekit.evaluate.records / scoring / cli)."""
from __future__ import annotations

import json
import re

import pytest

from tunekit.cli import main as cli
from tunekit.errors import UserError
from tunekit.evaluate.records import load_gold, load_predictions, prediction_record
from tunekit.evaluate.scoring import resolve_scorer, score_files

GOLD = [
    {"id": 1, "problem": "1+1は？", "solution": "2", "category": "中1", "unit": "計算"},
    {"id": 2, "problem": "x^2=4 を解け", "solution": ["$x = 2, -2$", r"$\pm 2$"], "category": "中3",
     "unit": "二次方程式", "evaluation_method": "soft"},
    {"id": 3, "problem": "(x+1)^2 を展開せよ", "solution": "$x^2 + 2x + 1$", "category": "中3",
     "unit": "式の展開", "difficulty": "2", "evaluation_method": "strict"},
    {"id": 4, "problem": "i^2 は？", "solution": "$-1$", "category": "IIB", "unit": "複素数",
     "evaluation_method": "complex"},
]


def write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n"
                            for x in lines), encoding="utf-8")
    return path


@pytest.fixture
def gold_file(tmp_path):
    return write(tmp_path / "gold.jsonl", GOLD)


def test_all_correct_gives_official_json(tmp_path, gold_file):
    preds = write(tmp_path / "pred.jsonl", [
        {"id": 1, "output": r"\boxed{2}"},
        {"id": 2, "output": "$x = -2, 2$"},
        {"id": 3, "output": "$x^{2} + 2x + 1$"},
        {"id": 4, "output": "$i^2$"},
    ])
    out = tmp_path / "scores.json"
    report = score_files(preds, gold_file, scorer="tunekit", out_path=out)
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["overall_accuracy"] == 1.0
    assert data["category_accuracies"] == {"中1": 1.0, "中3": 1.0, "IIB": 1.0}
    assert data["detailed_results"] == {"1": True, "2": True, "3": True, "4": True}
    assert data["scorer"].startswith("tunekit (math-verify")
    assert report.problems == [] and report.missing == []


def test_missing_prediction_counts_as_wrong(tmp_path, gold_file):
    preds = write(tmp_path / "pred.jsonl", [{"id": 1, "output": "2"}])
    report = score_files(preds, gold_file, scorer="tunekit")
    assert report.detailed_results == {"1": True, "2": False, "3": False, "4": False}
    assert report.overall_accuracy == 0.25
    assert report.missing == ["2", "3", "4"]
    assert report.category_accuracies == {"中1": 1.0, "中3": 0.0, "IIB": 0.0}


def test_extra_key_rejects_the_line_and_the_problem_is_wrong(tmp_path, gold_file):
    preds = write(tmp_path / "pred.jsonl", [
        {"id": 1, "output": "2", "model": "sft"},              # unknown key: the official loader fails
        {"id": 2, "output": "$\\pm 2$", "problem": "x^2=4 を解け", "category": "中3"},  # gold keys are fine
    ])
    report = score_files(preds, gold_file, scorer="tunekit")
    assert report.detailed_results["1"] is False
    assert report.detailed_results["2"] is True
    assert len(report.problems) == 1
    assert "pred.jsonl:1: unknown key(s) model" in report.problems[0]


@pytest.mark.parametrize("line, why", [
    ("{not json", "not valid JSON"),
    ('{"output": "2"}', "missing id"),
    ('{"id": 1}', "missing output"),
    ('{"id": 1, "output": 2}', "output must be a string"),
    ('[1, 2]', "not a JSON object"),
])
def test_bad_prediction_lines_are_reported_with_line_numbers(tmp_path, line, why):
    preds = load_predictions(write(tmp_path / "p.jsonl", ['{"id": 9, "output": "x"}', line]))
    assert preds.lines_read == 2
    assert list(preds.by_id) == [9]
    assert len(preds.rejected) == 1 and f"p.jsonl:2: {why}" in preds.rejected[0]


def test_a_file_the_official_tool_would_stop_on_is_scored_and_flagged(tmp_path, gold_file, capsys):
    preds = write(tmp_path / "pred.jsonl", [
        {"id": 1, "output": "2"},
        {"id": 2, "output": None},                 # officially: TypeError when problem 2 is scored
        {"id": 3, "output": 5},
        {"id": 77, "output": None},                # not a gold id: never scored, officially harmless
    ])
    out = tmp_path / "o.json"
    report = score_files(preds, gold_file, scorer="tunekit", out_path=out)
    assert report.detailed_results == {"1": True, "2": False, "3": False, "4": False}
    assert len(report.official_failures) == 2
    assert "pred.jsonl:2: output is null" in report.official_failures[0]
    assert "pred.jsonl:3: output is int" in report.official_failures[1]
    assert json.loads(out.read_text(encoding="utf-8"))["official_tool_would_fail"] == report.official_failures
    assert cli(["eval", "score", str(preds), str(gold_file), "--scorer", "tunekit", "-q"]) == 0
    assert "the official math-eval would STOP on this prediction file" in capsys.readouterr().out


def test_ids_as_the_official_loader_reads_them(tmp_path, gold_file):
    # An id that is a list stops the official loader; a float or bool id equals the int gold id.
    preds = write(tmp_path / "pred.jsonl", [{"id": [1], "output": "2"}, {"id": 1.0, "output": "2"},
                                            {"id": 2, "output": None}, {"id": 2, "output": "$\\pm 2$"}])
    report = score_files(preds, gold_file, scorer="tunekit")
    assert report.detailed_results["1"] is True
    assert report.detailed_results["2"] is True            # the later line replaced the null one
    assert len(report.official_failures) == 1 and "pred.jsonl:1: id must be" in report.official_failures[0]


def test_an_error_the_official_scorer_reraises_is_flagged(tmp_path):
    gold = write(tmp_path / "g.jsonl", [{"id": "a", "problem": "p", "solution": "$$(1+i, 2)$$",
                                         "category": "IIB", "unit": "u", "evaluation_method": "complex"}])
    preds = write(tmp_path / "p.jsonl", [{"id": "a", "output": "$[1+i, 2]$"}])
    report = score_files(preds, gold, scorer="tunekit")
    assert report.overall_accuracy == 0.0
    assert len(report.official_failures) == 1 and "problem 'a'" in report.official_failures[0]
    assert "ValueError" in report.official_failures[0]


def test_duplicate_prediction_later_line_wins_and_is_reported(tmp_path, gold_file):
    preds = write(tmp_path / "pred.jsonl", [{"id": 1, "output": "3"}, {"id": 1, "output": "2"}])
    report = score_files(preds, gold_file, scorer="tunekit")
    assert report.detailed_results["1"] is True
    assert any("duplicate id 1" in p for p in report.problems)


def test_id_of_another_json_type_is_missing_as_officially_and_explained(tmp_path, gold_file):
    preds = write(tmp_path / "pred.jsonl", [{"id": "1", "output": "2"}])
    report = score_files(preds, gold_file, scorer="tunekit")
    assert report.detailed_results["1"] is False
    assert "1" in report.missing
    assert any("another JSON type" in p for p in report.problems)


def test_predictions_for_unknown_ids_are_reported(tmp_path, gold_file):
    preds = write(tmp_path / "pred.jsonl", [{"id": 1, "output": "2"}, {"id": 99, "output": "2"}])
    report = score_files(preds, gold_file, scorer="tunekit")
    assert report.overall_accuracy == 0.25
    assert any("not in the gold set" in p and "99" in p for p in report.problems)


def test_missing_evaluation_method_is_soft(tmp_path):
    gold = write(tmp_path / "g.jsonl", [{"id": "a", "problem": "p", "solution": r"$\frac{1}{2}$",
                                         "category": "IA", "unit": "u"}])
    preds = write(tmp_path / "p.jsonl", [{"id": "a", "output": "0.5"}])
    assert score_files(preds, gold, scorer="tunekit").overall_accuracy == 1.0


@pytest.mark.parametrize("line, why", [
    ({"id": 1, "problem": "p", "category": "c", "unit": "u"}, "missing key(s) solution"),
    ({"id": 1, "problem": "p", "solution": "1", "category": "c", "unit": "u", "note": 1}, "unknown key(s) note"),
    ({"id": 1, "problem": "p", "solution": "1", "category": "c", "unit": "u", "evaluation_method": "fuzzy"},
     "evaluation_method 'fuzzy'"),
    ({"id": 1, "problem": "p", "solution": [], "category": "c", "unit": "u"}, "solution must be"),
])
def test_bad_gold_lines_are_errors_with_line_numbers(tmp_path, line, why):
    gold = write(tmp_path / "g.jsonl", [GOLD[0] | {"id": 0}, line])
    with pytest.raises(UserError, match=re.escape(why)) as exc:
        load_gold(gold)
    assert "g.jsonl:2:" in str(exc.value)


def test_gold_folder_reads_every_file_and_rejects_duplicate_ids(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    write(folder / "a.jsonl", GOLD[:2])
    write(folder / "b.jsonl", GOLD[2:])
    assert [g["id"] for g in load_gold(folder)] == [1, 2, 3, 4]
    write(folder / "c.jsonl", GOLD[:1])
    with pytest.raises(UserError, match="duplicate id 1"):
        load_gold(folder)


def test_prediction_record_keeps_only_allowed_keys():
    rec = prediction_record({**GOLD[2], "_internal": 1}, "out")
    assert set(rec) == {"id", "problem", "solution", "category", "unit", "difficulty",
                        "evaluation_method", "output"}


def test_official_scorer_unavailable_is_a_clear_error():
    try:
        import math_eval.main  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="math-eval package is not importable"):
            resolve_scorer("official")
        assert resolve_scorer("auto")[0].startswith("tunekit")
    else:  # pragma: no cover - only where the official scorer is installed
        assert resolve_scorer("auto")[0].startswith("official")


def test_cli_score_prints_table_and_writes_json(tmp_path, gold_file, capsys):
    preds = write(tmp_path / "pred.jsonl", [{"id": 1, "output": "2"}, {"id": 3, "output": "$(x+1)^2$"}])
    out = tmp_path / "o.json"
    assert cli(["eval", "score", str(preds), str(gold_file), "-o", str(out), "--scorer", "tunekit", "-q"]) == 0
    text = capsys.readouterr().out
    assert "Overall" in text and "0.250" in text and "中3" in text
    assert "2 gold problem(s) without a prediction" in text
    assert json.loads(out.read_text(encoding="utf-8"))["detailed_results"]["3"] is False  # strict


def test_cli_score_user_error_is_one_line(tmp_path, gold_file, capsys):
    assert cli(["eval", "score", str(tmp_path / "nope.jsonl"), str(gold_file)]) == 2
    assert "prediction file not found" in capsys.readouterr().err


def test_official_scorer_is_used_and_recorded_when_importable(tmp_path, gold_file, monkeypatch):
    import sys
    import types

    calls = []

    def parse_and_verify(prediction, gold, evaluation_method=None):
        calls.append(evaluation_method)
        golds = gold if isinstance(gold, list) else [gold]
        return prediction.strip() in golds

    pkg, mod = types.ModuleType("math_eval"), types.ModuleType("math_eval.main")
    mod.parse_and_verify = parse_and_verify
    pkg.main = mod
    monkeypatch.setitem(sys.modules, "math_eval", pkg)
    monkeypatch.setitem(sys.modules, "math_eval.main", mod)
    preds = write(tmp_path / "pred.jsonl", [{"id": 1, "output": "2"}, {"id": 4, "output": "$-1$"}])
    report = score_files(preds, gold_file, scorer="auto")
    assert report.scorer.startswith("official math-eval")
    assert report.detailed_results == {"1": True, "2": False, "3": False, "4": True}
    assert calls == [None, "complex"]   # the gold's evaluation_method is passed through
