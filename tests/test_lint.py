"""Module-level import structure: no module of the kit reaches itself through its (runtime) imports.

`make lint` checks the package-level contracts (import-linter, in pyproject.toml); this checks
every single module, including the one package-level loop that contract lists as known.
"""
from __future__ import annotations

import grimp


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("tunekit", cache_dir=None, exclude_type_checking_imports=True)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append(" -> ".join((importer, *back)))
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_training_and_data_layers():
    graph = grimp.build_graph("tunekit", cache_dir=None, exclude_type_checking_imports=True)
    assert not graph.chain_exists(importer="tunekit.data", imported="tunekit.train", as_packages=True)
    assert not graph.chain_exists(importer="tunekit.train", imported="tunekit.evaluate", as_packages=True)
