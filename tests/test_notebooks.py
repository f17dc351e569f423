"""The notebooks run headless on the embedded sample, and are committed without outputs."""

from __future__ import annotations

import nbformat
import pytest
from conftest import REPO, execute_notebook

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _outputs(notebook: nbformat.NotebookNode, kind: str) -> list[str]:
    return [
        output.get("text", "") + output.get("data", {}).get(kind, "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream" or kind in output.get("data", {})
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_committed_notebooks_have_no_outputs(path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert len(NOTEBOOKS) >= 2


def test_exploration_notebook_runs_on_the_sample() -> None:
    notebook = execute_notebook(REPO / "notebooks" / "explore_data.ipynb")
    text = "\n".join(_outputs(notebook, "text/plain"))
    assert "876 labelled products, 27 product types, 435 with their photo" in text
    assert "without description: " in text and "without photo: 50.3%" in text
    # Class balance, lengths, languages, missing data, photos: one figure each.
    assert len(_outputs(notebook, "image/png")) >= 5
    for column in ("share_in_full_data", "title words", "french", "german"):
        assert column in text, column
