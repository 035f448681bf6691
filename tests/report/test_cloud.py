"""The cloud source: the server-side query, the on-disk cache, and the real `wandb.Api` (through
wandb-core) against a stand-in for the W&B server at the HTTP boundary (see conftest)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from benchmark.report import cloud, main, offline
from benchmark.report.runs import Filters, Run

if TYPE_CHECKING:
    from tests.report.conftest import CloudStandIn, Sweep


def test_server_filters_use_wandb_query_shapes() -> None:
    filters = Filters(
        tags=["a", "b"], group="g", state="finished", config={"trl_ppo_trainer_config.exp_name": "x", "seed": "1"}
    )
    assert cloud.server_filters(filters) == {
        "$and": [
            {"tags": {"$in": ["a"]}},
            {"tags": {"$in": ["b"]}},
            {"group": "g"},
            {"state": "finished"},
            {"config.trl_ppo_trainer_config.value.exp_name": {"$in": ["x"]}},
            {"config.seed.value": {"$in": ["1", 1]}},
        ]
    }
    assert cloud.server_filters(Filters()) == {}


def test_cache_serves_a_run_until_it_changes(sweep: Sweep, tmp_path: Path) -> None:
    real, _ = offline.read_run(sweep.runs["sentiment_tuning", 1].file)
    real.summary = dict(real.summary)  # the API hands a plain dict
    fetches: list[str] = []

    def fetch() -> Run:
        fetches.append(real.id)
        return real

    first = cloud.cached(tmp_path, real.id, "2026-11-28T10:00:00/40", fetch)
    again = cloud.cached(tmp_path, real.id, "2026-11-28T10:00:00/40", fetch)
    assert len(fetches) == 1
    pd.testing.assert_frame_equal(again.history, real.history)
    assert (again.config, again.summary, again.state, again.tags) == (real.config, real.summary, real.state, real.tags)
    assert first is real

    cloud.cached(tmp_path, real.id, "2026-11-28T11:00:00/41", fetch)  # the run moved on
    assert len(fetches) == 2
    cloud.cached(tmp_path, real.id, "2026-11-28T11:00:00/41", fetch, refresh=True)
    assert len(fetches) == 3

    (tmp_path / f"{real.id}.json").unlink()  # a fetch interrupted before its entry was complete
    cloud.cached(tmp_path, real.id, "2026-11-28T11:00:00/41", fetch)
    assert len(fetches) == 4


def test_default_cache_is_outside_site_packages(monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert cloud.default_cache_dir() == Path("/somewhere/trl-benchmark/wandb")


@pytest.mark.parametrize("wandb_cloud", [False, True], indirect=True, ids=["row pages", "parquet export"])
def test_fetches_full_histories_through_wandb_api_then_serves_the_cache(
    sweep: Sweep, wandb_cloud: CloudStandIn, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    filters = Filters(tags=["report-test"], config={"trl_ppo_trainer_config.model_name": "gpt2-xl"})
    runs = cloud.fetch_runs("lab", "trl", filters, cache)
    asked = [op for op, _ in wandb_cloud.operations]
    runs_query = next(variables for op, variables in wandb_cloud.operations if op == "Runs")
    assert json.loads(runs_query["filters"]) == cloud.server_filters(filters)
    exports = [v["path"] for op, v in wandb_cloud.operations if op == "GET" and v["path"].startswith("/parquet/")]
    if wandb_cloud.parquet:  # wandb reads the export files, and asks for no row pages
        assert len(exports) == len(wandb_cloud.runs) and "HistoryPage" not in asked
    else:  # every row, one page each, never sampled
        assert asked.count("HistoryPage") == len(wandb_cloud.runs) and not exports
    for run in runs:
        logged = wandb_cloud.runs[run.id]
        assert run.name == logged.name and run.config == logged.config and run.gpu_count == 2
        served = pd.DataFrame(wandb_cloud.rows(run.id))
        pd.testing.assert_frame_equal(run.history[served.columns], served, check_dtype=False)

    wandb_cloud.operations.clear()
    again = cloud.fetch_runs("lab", "trl", filters, cache)
    assert [op for op, _ in wandb_cloud.operations if op == "HistoryPage"] == []  # all from the cache
    assert [r.id for r in again] == [r.id for r in runs]


def test_report_from_the_cloud(sweep: Sweep, wandb_cloud: CloudStandIn, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--entity", "lab", "--project", "trl", "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(out)]
    assert main([*args, "--filter", "trl_ppo_trainer_config.model_name=gpt2-xl"]) == 0
    with open(out / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    finals = [statistics.fmean(r["env/reward_mean"] for r in sweep.runs[row["variant"], s].rows[-10:]) for s in (1, 2)]
    assert float(row["reward_mean"]) == pytest.approx(statistics.fmean(finals))
    runtime = 0.5 * 39  # the stand-in's `_runtime` at the last of 40 steps
    assert float(row["gpu_hours"]) == pytest.approx(2 * 2 * runtime / 3600)  # 2 runs x 2 GPUs
