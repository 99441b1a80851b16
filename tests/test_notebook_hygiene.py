"""Notebook gates: py:percent/ipynb pairs in sync, .ipynb stripped of outputs, one parameters cell
whose names and literal types match the notebook setup contract (mlmlmlm.notebook.PARAMETERS)."""

import ast
from pathlib import Path

import jupytext
import nbformat
import pytest

from mlmlmlm.config import REPO_ROOT
from mlmlmlm.notebook import PARAMETERS

NB_DIR = REPO_ROOT / "notebooks"
SOURCES = sorted(NB_DIR.glob("*.py"))


def test_every_phase_has_a_pair():
    assert SOURCES, "no notebook sources"
    assert {p.stem for p in SOURCES} == {p.stem for p in NB_DIR.glob("*.ipynb")}


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_pair_in_sync(src: Path):
    py = jupytext.read(src)
    nb = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in py.cells] == \
        [(c.cell_type, c.source) for c in nb.cells], \
        f"{src.name} and its .ipynb differ: run `make notebooks`"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_ipynb_stripped(src: Path):
    nb = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{src.stem}.ipynb cell {i} has outputs"
            assert cell.execution_count is None, f"{src.stem}.ipynb cell {i} has a count"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_one_parameters_cell_matching_contract(src: Path):
    nb = jupytext.read(src)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{src.name}: {len(cells)} parameters cells"
    tree = ast.parse(cells[0].source)
    values = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{src.name}: parameters cell holds only assignments"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    assert set(values) == set(PARAMETERS), src.name
    for name, value in values.items():
        assert isinstance(value, PARAMETERS[name]), (src.name, name)
    assert values["smoke"] is True, "defaults must be smoke-sized"
    for line in cells[0].source.splitlines():
        assert "#" in line, f"{src.name}: parameter without a comment: {line}"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_cells_short_and_define_no_classes(src: Path):
    nb = jupytext.read(src)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert "class " not in cell.source, f"{src.name}: a class belongs in mlmlmlm/"
        assert "sys.path" not in cell.source
        assert len(cell.source.splitlines()) <= 20, f"{src.name}: cell too long:\n{cell.source}"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(src: Path):
    import papermill

    found = papermill.inspect_notebook(str(src.with_suffix(".ipynb")))
    assert list(found) == list(PARAMETERS), f"{src.name}: papermill parsed {list(found)}"
