"""The `.wandb` reader against what was logged, against wandb's own dump, and on damaged files."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import wandb
from wandb.proto import wandb_internal_pb2 as pb

from benchmark.report import offline
from benchmark.report.runs import CRASHED, FAILED, FINISHED, history_frame, numbers_only

WANDB_CLI = str(Path(sys.executable).parent / "wandb")


if TYPE_CHECKING:
    from tests.report.conftest import Sweep


def assert_rows_equal(history, rows: list[dict[str, float]]) -> None:
    """Every logged number, step by step, read back exactly (floats survive JSON round trips)."""
    assert list(history["_step"]) == list(range(len(rows)))
    for key in rows[0]:
        read = history[key].tolist() if key in history else []
        logged = [row.get(key, math.nan) for row in rows]
        assert read == pytest.approx(logged, rel=1e-15, nan_ok=True), key


def test_histories_equal_what_was_logged(sweep: Sweep) -> None:
    for key, logged in sweep.runs.items():
        if key == sweep.truncated:
            continue
        run, damage = offline.read_run(logged.file)
        assert damage is None
        assert_rows_equal(run.history, logged.rows)
        # Histograms and text are not curves.
        assert not {"env/reward_dist", "note"} & set(run.history.columns)
        assert run.config == logged.config
        assert (run.name, run.group, run.tags, run.project) == (logged.name, "sweep", ["report-test"], "trl")
        assert run.state == (FAILED if key == sweep.failed else FINISHED)
        assert ("objective/kl" in run.history) == (key != sweep.no_kl)


def reference_history(path: Path) -> pd.DataFrame:
    """A file's history decoded the slow, plain way: record by record, item by item, with wandb's own
    `Record` and `json.loads`."""
    rows = []
    for body in offline.read_records(path).bodies:
        record = pb.Record.FromString(body)
        if record.HasField("history"):
            items = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            rows.append({k: float(v) for k, v in numbers_only(items).items()})  # every column a float
    return history_frame(rows)


def test_history_equals_item_by_item_decoding(sweep: Sweep, offline_dir: Path) -> None:
    """The column-wise decoder against the reference: on the sweep (histograms and text beside the
    numbers: the mixed path) and on a run of plain metrics only (the fast path), with the numbers
    JSON writes specially, ints, and a metric logged at some steps only."""
    run = wandb.init(project="plain", name="plain")
    for step in range(300):
        row = {"loss": 1 / (step + 1), "count": step, "odd": math.nan if step % 7 else math.inf}
        run.log(row | ({"eval/score": -step * 0.5} if step % 10 == 0 else {}))
    plain = Path(run.dir).parent / f"run-{run.id}.wandb"
    run.finish()
    wandb.teardown()
    for path in [plain, *(logged.file for logged in sweep.runs.values())]:
        expected = reference_history(path)
        assert not expected.empty
        pd.testing.assert_frame_equal(offline.read_run(path)[0].history, expected, check_like=True)


def test_truncated_file_keeps_every_record_before_the_cut(sweep: Sweep) -> None:
    logged = sweep.runs[sweep.truncated]
    run, damage = offline.read_run(logged.file)
    assert damage is not None and damage.path == logged.file
    # The damage is found in the 32 KiB block the cut falls in, not earlier: what precedes it is kept.
    assert sweep.truncate_at - 32 * 1024 < damage.offset <= sweep.truncate_at
    assert str(logged.file) in str(damage) and str(damage.offset) in str(damage)
    assert run.state == CRASHED
    assert 0 < len(run.history) < len(logged.rows)
    assert_rows_equal(run.history, logged.rows[: len(run.history)])
    assert run.config == logged.config  # the run record comes first and survives


def test_corrupt_byte_stops_at_the_damaged_record(sweep: Sweep, tmp_path: Path) -> None:
    source = sweep.runs[("sentiment_tuning", 1)]
    corrupt = tmp_path / source.file.name
    shutil.copy(source.file, corrupt)
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    run, damage = offline.read_run(corrupt)
    assert damage is not None and damage.reason == "checksum mismatch"
    assert len(data) // 2 - 32 * 1024 < damage.offset <= len(data) // 2
    assert 0 < len(run.history) < len(source.rows)
    assert_rows_equal(run.history, source.rows[: len(run.history)])


def test_not_a_wandb_file(tmp_path: Path) -> None:
    junk = tmp_path / "run-junk.wandb"
    junk.write_bytes(b"hello")
    run, damage = offline.read_run(junk)
    assert damage is not None and damage.offset == 0
    assert run.history.empty


def test_finds_runs_from_wandb_dir_its_parent_or_one_run_folder(sweep: Sweep) -> None:
    files = {logged.file for logged in sweep.runs.values()}
    assert set(offline.find_run_files(sweep.wandb_dir)) == files  # WANDB_DIR
    assert set(offline.find_run_files(sweep.wandb_dir / "wandb")) == files  # latest-run not counted twice
    one = sweep.runs[sweep.failed].file
    assert offline.find_run_files(one.parent) == [one]


def leet_dump(path: Path) -> list[dict]:
    result = subprocess.run([WANDB_CLI, "leet", "inspect", "--json", str(path)], capture_output=True, check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_matches_wandb_leet_inspect(sweep: Sweep) -> None:
    """wandb's own reader and ours agree on history, config, summary and state."""
    logged = sweep.runs[sweep.failed]
    run, _ = offline.read_run(logged.file)
    records = leet_dump(logged.file)
    leet_rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert len(leet_rows) == len(run.history)
    for ours, theirs in zip(run.history.to_dict("records"), leet_rows, strict=True):
        numbers = {k: v for k, v in theirs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        assert ours == pytest.approx(numbers, rel=1e-15)

    summary_json = subprocess.run(
        [WANDB_CLI, "leet", "inspect", "--summary", "--json", str(logged.file)], capture_output=True, check=True
    ).stdout
    theirs = json.loads(summary_json)
    assert theirs["config"] == run.config
    assert theirs["state"] == run.state == "failed"
    assert {k: v for k, v in run.summary.items() if not isinstance(v, dict)} == {
        k: v for k, v in theirs["summary"].items() if not isinstance(v, dict)
    }


@pytest.mark.slow
def test_ten_thousand_steps_read_well_under_a_second(offline_dir: Path) -> None:
    run = wandb.init(project="speed", name="long")
    for step in range(10_000):
        run.log({"env/reward_mean": step * 1e-3, "objective/kl": 0.5})
    path = Path(run.dir).parent / f"run-{run.id}.wandb"
    run.finish()
    wandb.teardown()  # the file is complete only once wandb-core has stopped
    # CPU time, not wall time: CI machines run other suites beside this one.
    start = time.process_time()
    read, damage = offline.read_run(path)
    elapsed = time.process_time() - start
    assert damage is None and len(read.history) == 10_000
    assert elapsed < 1.0, f"{elapsed:.2f} s"
