"""The analysis notebooks run top to bottom (so they never rot) and are kept without outputs."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from experiments.replay import run_experiment
from replay_runs import REPO, SIM_TINY, config

NOTEBOOKS = REPO / "analysis" / "notebooks"


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def with_parameter(nb: nbformat.NotebookNode, line: str) -> nbformat.NotebookNode:
    """Set a parameter as papermill does: a cell right after the one tagged `parameters`."""
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(line))
    return nb


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for out in c.outputs)


def all_text(nb: nbformat.NotebookNode) -> str:
    return "\n".join(str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for out in c.outputs)


@pytest.mark.parametrize("name", ["01_single_run.ipynb", "02_sweep.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    for cell in read(name).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """Where the kernel's `tempfile` puts what a notebook makes for itself."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp"


def test_single_run_notebook_makes_and_shows_a_run(tmp_path, temp_dir):
    nb = execute(read("01_single_run.ipynb"), tmp_path)
    assert images(nb) == 4  # CDFs (standard, by hand), time series, TTFT over time
    text = all_text(nb)
    assert f"{temp_dir}/testbed-run-" in text and "/run: complete" in text
    assert "Requests and throughput" in text and "finished" in text


def test_single_run_notebook_reads_a_given_run(tmp_path):
    """Up to the cell that loads the run (the figures are tested above)."""
    run_dir = tmp_path / "my run"
    run_experiment(config(*SIM_TINY, "trace=synthetic", "trace.synthetic.n=30"), run_dir)
    nb = with_parameter(read("01_single_run.ipynb"), f"RUN_DIR = {str(run_dir)!r}")
    loads = next(i for i, c in enumerate(nb.cells) if "load_run(RUN_DIR)" in c.source)
    nb.cells = nb.cells[:loads + 1]
    assert f"{run_dir}: complete" in all_text(execute(nb, tmp_path))


def test_sweep_notebook_makes_and_plots_a_sweep(tmp_path, temp_dir):
    nb = execute(read("02_sweep.ipynb"), tmp_path)
    text = all_text(nb)
    assert f"{temp_dir}/testbed-sweep-" in text
    assert "6 runs, varying" in text and "'scheduler'" in text and "'trace.transforms.rate_scale'" in text
    assert images(nb) == 3  # latency vs rate (standard, by hand), CDFs at the highest rate
