"""The example notebooks (examples/notebooks/) run end to end on the stand-ins, in a kernel, as a user runs them.

TRL_PPO_ASSETS points them at the stand-ins (a few small steps); W&B runs offline into the test's folder. The
kernel inherits the HF_* offline variables that tests/conftest.py sets.
"""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parents[2] / "examples" / "notebooks"


def run_notebook(name: str, assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Executes the notebook in a fresh `python3` kernel, working in tmp_path; a failing cell raises.

    OMP_NUM_THREADS=1 does for the kernel what the one_thread fixture does here (2 shared cores)."""
    for var, value in {
        "TRL_PPO_ASSETS": str(assets), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "OMP_NUM_THREADS": "1",
    }.items():
        monkeypatch.setenv(var, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not any(cell.outputs or cell.execution_count for cell in code), "committed with outputs"
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    return notebook


def tagged(notebook: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    return cell


def outputs_of(cell: nbformat.NotebookNode, mime: str) -> list[str]:
    return [o["data"][mime] for o in cell.outputs if mime in o.get("data", {})]


def assert_ran_everything(notebook: nbformat.NotebookNode, tmp_path: Path, saved: str) -> list[dict]:
    """Every code cell ran, in order, without an error; the model was saved. Returns the W&B run's history."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert (tmp_path / saved / "config.json").exists() and (tmp_path / saved / "tokenizer_config.json").exists()
    (run,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    dump = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run)],
                          capture_output=True, text=True, check=True, timeout=120).stdout
    records = [json.loads(line) for line in dump.splitlines()]
    return [r["history"]["item"] for r in records if r["type"] == "history"]


@pytest.mark.slow
def test_the_sentiment_notebook_trains_inspects_and_saves(
    assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = run_notebook("gpt2-sentiment.ipynb", assets, tmp_path, monkeypatch)
    history = assert_ran_everything(notebook, tmp_path, "gpt2-imdb-pos-v2")
    assert len(history) == 3  # the stand-ins' 3 PPO steps, each logged with its game log
    assert all("env/reward_mean" in step and "game_log._type" in step for step in history)
    (table,) = outputs_of(tagged(notebook, "inspection"), "text/html")
    for column in ("query", "response (before)", "response (after)", "rewards (before)", "rewards (after)"):
        assert f"<th>{column}</th>" in table
    assert table.count("</tr>") == 1 + 16  # the header and one row per query


@pytest.mark.slow
def test_the_control_notebook_plots_the_reward_per_control_token(
    assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = run_notebook("gpt2-control.ipynb", assets, tmp_path, monkeypatch)
    history = assert_ran_everything(notebook, tmp_path, "gpt2-imdb-ctrl")
    assert len(history) == 3
    for step in history:
        assert {"env/reward_negative", "env/reward_neutral", "env/reward_positive", "game_log._type"} <= set(step)
    cell = tagged(notebook, "reward-distribution")
    (figure,) = outputs_of(cell, "image/png")
    assert len(figure) > 10_000  # base64 of a two-panel PNG
    (table,) = outputs_of(cell, "text/plain")[-1:]
    for token in ("[negative]", "[neutral]", "[positive]"):
        assert token in table
    assert "before" in table and "after" in table and "nan" not in table.lower()
