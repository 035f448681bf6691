"""The tidy results table (results.parquet): what it holds, its x-axes, and the round trip through `--from`."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.report import offline
from benchmark.report.results import Results
from benchmark.report.runs import Found, Run, exp_name


def sweep_runs(sweep) -> list[Run]:
    found = Found()
    offline.read_runs(offline.find_run_files(sweep.wandb_dir), found)
    return found.runs


def test_the_table_holds_every_logged_number_and_survives_its_file(sweep, tmp_path: Path) -> None:
    runs = sweep_runs(sweep)
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(exp_name(run), []).append(run)
    table = Results.of(groups, ["env/reward_mean", "objective/kl"])
    # Every logged reward is a row, under its run's variant and seed.
    reward = table.points[table.points["metric"] == "env/reward_mean"]
    logged = {(v, s): r for (v, s), r in sweep.runs.items()}
    for run in runs:
        rows = reward[reward["run"] == run.id]
        seed = run.config["trl_ppo_trainer_config"]["seed"]
        assert set(rows["variant"]) == {exp_name(run)} and set(rows["seed"]) == {seed}
        expected = [r["env/reward_mean"] for r in logged[(exp_name(run), seed)].rows][: len(rows)]
        assert rows.sort_values("step")["value"].tolist() == pytest.approx(expected)
    # Samples as an x-axis: classic runs log none, so (step + 1) x batch size.
    samples = table.points[table.points["metric"] == "_samples"]
    assert (samples["value"] == (samples["step"] + 1) * 16).all()

    path = tmp_path / "results.parquet"
    table.write(path)
    back = Results.read(path)
    pd.testing.assert_frame_equal(back.points, table.points)
    assert back.runs["run"].tolist() == table.runs["run"].tolist()
    assert back.runs["config"].tolist() == table.runs["config"].tolist()
    # Read back as runs, the same table again.
    again = Results.of({v: [r for r in back.to_runs(None, str(path)) if r.variant == v] for v in groups},
                       ["env/reward_mean", "objective/kl"])
    pd.testing.assert_frame_equal(again.points.reset_index(drop=True), table.points.reset_index(drop=True),
                                  check_categorical=False)


def test_x_axes_come_from_the_logged_counters_else_from_the_config() -> None:
    history = pd.DataFrame({"_step": [0, 1, 2], "env/reward_mean": [1.0, 2.0, 3.0],
                            "tokens/responses_len_mean": [4.0, 5.0, 6.0]})
    classic = Run("a", "a", "finished", {"trl_ppo_trainer_config": {"batch_size": 8}}, {}, history)
    ours = Run("b", "b", "finished", {}, {}, history.assign(**{"counters/samples": [10, 20, 30],
                                                               "counters/tokens": [7, 8, 9]}))
    table = Results.of({"classic": [classic], "ours": [ours]}, ["env/reward_mean"])
    by_run = {run: frame for run, frame in table.points.groupby("run", observed=True)}

    def axis(run: str, name: str) -> list[float]:
        frame = by_run[run]
        return frame[frame["metric"] == name].sort_values("step")["value"].tolist()

    assert axis("a", "_samples") == [8, 16, 24] and axis("a", "_tokens") == [32, 72, 120]
    assert axis("b", "_samples") == [10, 20, 30] and axis("b", "_tokens") == [7, 8, 9]
    (curve,) = table.series("env/reward_mean", "_samples")["classic"]
    assert np.array_equal(curve.x, [8, 16, 24]) and np.array_equal(curve.y, [1, 2, 3])


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark.report", *args], capture_output=True, text=True,
                          timeout=300)


def test_report_from_its_results_parquet_gives_the_same_numbers(sweep, tmp_path: Path) -> None:
    """report -> results.parquet -> report --from: the same summary, with no W&B at all."""
    first, second = tmp_path / "first", tmp_path / "second"
    done = report("--wandb-dir", str(sweep.wandb_dir), "--output-dir", str(first))
    assert done.returncode == 0, done.stderr
    assert (first / "results.parquet").exists()
    done = report("--from", str(first / "results.parquet"), "--output-dir", str(second))
    assert done.returncode == 0, done.stderr
    rows = [list(csv.DictReader((folder / "summary.csv").open())) for folder in (first, second)]
    assert rows[0] == rows[1]
    # Two sources, each labelled: the same variants stay apart.
    both = tmp_path / "both"
    done = report("--from", f"old={first / 'results.parquet'}", "--from", f"new={first / 'results.parquet'}",
                  "--output-dir", str(both))
    assert done.returncode == 0, done.stderr
    variants = [row["variant"] for row in csv.DictReader((both / "summary.csv").open())]
    assert "sentiment_tuning (old)" in variants and "sentiment_tuning (new)" in variants
