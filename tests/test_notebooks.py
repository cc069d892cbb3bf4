"""Every notebook in notebooks/ runs top to bottom, in its quick mode, and is stored executed.

The quick mode (SEG_JAX_NOTEBOOK_QUICK=1, read in each notebook's first cell) shrinks steps and
sizes so that all of them run in a few minutes on 2 CPU cores; the stored outputs come from a
full-size run (`jupyter nbconvert --to notebook --execute --inplace notebooks/<name>.ipynb`).
The notebooks read the session's generated `shapes` dataset and write their runs under a
temporary directory.
"""

import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' installs nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
EXPECTED = {"loss_prototyping.ipynb", "decisions_and_calibration.ipynb",
            "metrics_walkthrough.ipynb"}


def test_the_three_notebooks_are_there():
    assert EXPECTED <= {os.path.basename(p) for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_stored_with_the_outputs_of_a_full_run(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "stored unexecuted"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "cells not run top to bottom in one kernel"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert any(o.get("data", {}).get("image/png") for c in code for o in c.outputs), "no figure"
    assert "QUICK" in code[0].source, "the first cell sets the quick mode"
    # Each step is explained: a text cell before each code cell.
    kinds = [c.cell_type for c in notebook.cells]
    assert all(kinds[i - 1] == "markdown" for i, k in enumerate(kinds) if k == "code" and i), \
        "a code cell without a text cell before it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_runs_top_to_bottom_in_quick_mode(path, shapes_data_dir, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    env = dict(os.environ, SEG_JAX_NOTEBOOK_QUICK="1", SEG_JAX_DATA_DIR=shapes_data_dir,
               SEG_JAX_NOTEBOOK_WORKDIR=str(tmp_path), MPLBACKEND="Agg")
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(path)}})
    # The kernel starts with `env`; a cell that raises raises CellExecutionError here, naming
    # the cell, with its traceback.
    client.execute(env=env)
