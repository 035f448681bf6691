"""The cloud source's own logic: the server-side query and the on-disk cache.

The calls into `wandb.Api` themselves (listing runs, `scan_history`) need the W&B cloud, which this
machine cannot reach; they are a dozen lines in `cloud.fetch_runs` / `cloud._from_api`. The cache is
exercised here with real runs read from wandb's own files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from benchmark.report import cloud, offline
from benchmark.report.runs import Run
from benchmark.report.select import Filters

if TYPE_CHECKING:
    from tests.report.conftest import Sweep


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
