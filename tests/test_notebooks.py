"""Notebook conventions, enforced: pairing, outputs, typed parameters that match their model.

test_pipeline.py (the demo chain, in `make test`) checks what notebooks print; these tests check how
they are built, so that a drifted .ipynb, a stray output or a parameter the validation cell does
not know can never be committed.
"""
from __future__ import annotations

import ast

import pytest

from tunekit.notebooks import NOTEBOOKS, _parameters_span, check, declared_parameters, generated_parameters
from tunekit.params import cell_type

BUILT = [nb for nb in NOTEBOOKS if nb.py.exists() or nb.ipynb.exists()]
ids = [nb.name for nb in BUILT]


def test_at_least_one_notebook_is_built():
    assert BUILT, "no notebook exists yet"


@pytest.mark.parametrize("nb", BUILT, ids=ids)
def test_pairing_outputs_and_reference(nb):
    assert check(nb) == []


@pytest.mark.parametrize("nb", BUILT, ids=ids)
def test_parameters_cell_is_generated_from_the_params_model(nb):
    """generated == committed: the cell is `tunekit notebooks sync`'s output for the params model."""
    text = nb.py.read_text(encoding="utf-8")
    start, end = _parameters_span(text, nb.py.name)
    assert text[start:end].strip() == generated_parameters(nb).strip(), "run `make sync-notebooks`"


def test_check_reports_a_hand_edited_parameters_cell(tmp_path, monkeypatch):
    from dataclasses import replace

    nb = next(n for n in BUILT if n.name == "30_sft")
    py = tmp_path / "30_sft.py"
    py.write_text(nb.py.read_text(encoding="utf-8").replace('lr: float = 0.003', 'lr: float = 0.004'),
                  encoding="utf-8")
    moved = replace(nb)
    monkeypatch.setattr(type(moved), "py", property(lambda self: py))
    assert any("parameters cell differs from what SFTParams declares" in p for p in check(moved))


@pytest.mark.parametrize("nb", BUILT, ids=ids)
def test_parameters_cell_matches_params_model(nb):
    declared = declared_parameters(nb.ipynb)
    fields = nb.params_model().model_fields
    assert set(declared) == set(fields), "parameters cell and params model declare different names"
    for name, info in declared.items():
        field = fields[name]
        default = field.get_default(call_default_factory=True)
        default = {k: dict(v) for k, v in default.items()} if isinstance(default, dict) else default
        assert ast.literal_eval(info["default"]) == default, f"{name}: defaults differ"
        declared_type = info["inferred_type_name"].split("[")[0]
        assert declared_type == cell_type(field.annotation), f"{name}: types differ"
        assert info["help"].strip(), f"{name}: parameter has no `# help` comment"
    assert {"run_name", "runs_dir"} <= set(declared)


@pytest.mark.parametrize("nb", BUILT, ids=ids)
def test_notebook_source_stays_thin(nb):
    """Logic belongs in lib/: no classes, no long functions, no branching on the environment."""
    tree = ast.parse(nb.py.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        assert not isinstance(node, ast.ClassDef), f"line {node.lineno}: class in a notebook"
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 10, f"line {node.lineno}: {node.name} is {length} lines (move it to lib/)"
    src = nb.py.read_text(encoding="utf-8")
    for banned in ("os.environ[", "torch.cuda.is_available()", "get_ipython"):
        assert banned not in src, f"{banned} in a notebook: environment decisions belong in lib/"
