"""`--run-dir`: the harness's manifest says which seeds were expected and what became of each job."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from benchmark import manifest as harness
from benchmark.manifest import JobRecord, Manifest
from benchmark.report import main

if TYPE_CHECKING:
    from tests.report.conftest import Sweep


def run_id(sweep: Sweep, key: tuple[str, int]) -> str:
    return sweep.runs[key].file.stem.removeprefix("run-")


def job(variant: str, seed: int, state: str, wandb_id: str | None = None, gpus: str | None = None) -> JobRecord:
    record = JobRecord(id=f"{variant}/{seed}", variant=variant, seed=seed, command="python ppo.py", log="x.log")
    record.state, record.wandb_id, record.gpus = state, wandb_id, gpus
    return record


def test_run_dir_reports_missing_crashed_and_running_seeds(
    sweep: Sweep, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "sweep"
    # Variant names differ from the runs' exp names: the manifest, not the config, decides.
    plan = {
        "cwd": str(sweep.wandb_dir),  # the jobs' working dir: their runs are in ./wandb there
        "backend": "local",
        "variants": [
            {"name": "baseline", "command": "..."},
            {"name": "accu", "command": "..."},
            {"name": "peft", "command": "..."},
        ],
        "seeds": [1, 2, 3],
    }
    records = [
        job("baseline", 1, harness.COMPLETED, run_id(sweep, ("sentiment_tuning", 1)), gpus="0,1"),
        job("baseline", 2, harness.COMPLETED, run_id(sweep, ("sentiment_tuning", 2)), gpus="2,3"),
        job("baseline", 3, harness.FAILED, run_id(sweep, sweep.failed)),
        job("accu", 1, harness.COMPLETED, run_id(sweep, ("sentiment_tuning_step_grad_accu", 1))),
        job("accu", 2, harness.RUNNING),  # started, no W&B run yet
        job("accu", 3, harness.PENDING),
        # peft: nothing started
    ] + [job("peft", s, harness.PENDING) for s in (1, 2, 3)]
    Manifest.create(run_dir, plan, records)

    out = tmp_path / "out"
    assert main(["--run-dir", str(run_dir), "--output-dir", str(out)]) == 0
    with open(out / "summary.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    # The sweep's folder holds 10 runs; only the manifest's 4 are taken.
    assert set(rows) == {"baseline", "accu", "peft"}
    baseline, accu, peft = rows["baseline"], rows["accu"], rows["peft"]
    assert (baseline["seeds_done"], baseline["seeds_expected"], baseline["seeds_crashed"]) == ("2", "3", "1")
    assert baseline["reward_n"] == "2" and baseline["missing_seeds"] == ""
    assert float(baseline["gpu_hours"]) > 0  # two GPUs per job, from the manifest
    assert (accu["seeds_done"], accu["seeds_running"], accu["missing_seeds"], accu["reward_n"]) == ("1", "1", "3", "1")
    assert (peft["seeds_done"], peft["missing_seeds"], peft["reward_n"]) == ("0", "1 2 3", "0")
    markdown = (out / "summary.md").read_text()
    assert "1 still running; missing seeds 3" in markdown and "missing seeds 1, 2, 3" in markdown
    assert (out / "curves.png").is_file()
    # A job without data is a table entry, not a run "missing a metric".
    assert "missing from runs" not in capsys.readouterr().err


def test_not_a_run_dir(tmp_path: Path) -> None:
    assert main(["--run-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2
