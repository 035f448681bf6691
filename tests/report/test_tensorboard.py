"""`benchmark report --tensorboard-dir`: runs written by torch's SummaryWriter, read back against the numbers
written, against the same numbers logged as offline W&B runs, and a real trl_ppo run end to end."""

from __future__ import annotations

import csv
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wandb
from scipy import stats
from torch.utils.tensorboard import SummaryWriter

from benchmark.report import tensorboard
from benchmark.report.cli import Sources
from benchmark.report.runs import Found

ROOT = Path(__file__).parents[2]
REWARD, KL = "env/reward_mean", "objective/kl"
VARIANTS = ("ppo", "ppo_step_grad_accu")
SEEDS = (1, 2, 3)
STEPS = 30
LAST_N = 5
STEP_S = 2.0  # seconds between logged steps, as written in the events' wall times
UNMATCHED = "matches no run name pattern"

Rows = list[dict[str, float]]


def numbers(variant: str, seed: int, steps: int = STEPS) -> Rows:
    """A rising reward and KL, noisy per seed. TensorBoard keeps scalars as float32, so the numbers are float32
    ones: both sources then hold them exactly and any difference between reports is the reading's."""
    rng = random.Random(f"{variant}/{seed}")
    offset = VARIANTS.index(variant) * 0.5 if variant in VARIANTS else 0.0
    return [
        {
            REWARD: float(np.float32(offset + 0.05 * step + rng.gauss(0, 0.1))),
            KL: float(np.float32(0.1 * step * (1 + 0.2 * seed) + rng.random() * 0.01)),
        }
        for step in range(steps)
    ]


def write_tensorboard(folder: Path, rows: Rows, flush_after: int | None = None) -> int:
    """A run as torch writes it: the reward as a plain scalar, the KL as a tensor (add_scalar's new style), and a
    histogram and text per step that are not curves. Returns the file's size after the first `flush_after` steps."""
    writer = SummaryWriter(str(folder))
    start = time.time()
    flushed = 0
    for step, row in enumerate(rows):
        wall = start + 100 + STEP_S * step
        writer.add_scalar(REWARD, row[REWARD], step, walltime=wall)
        writer.add_scalar(KL, row[KL], step, walltime=wall, new_style=True)
        writer.add_histogram("env/reward_dist", np.array([row[REWARD], 0.0, 1.0]), step, walltime=wall)
        writer.add_text("game_log", f"query {step} -> response", step, walltime=wall)
        if step + 1 == flush_after:
            writer.flush()
            (events,) = folder.glob("events.out.tfevents.*")
            flushed = events.stat().st_size
    writer.close()
    return flushed


def report(*flags: str, command: str = "report") -> subprocess.CompletedProcess[str]:
    prefix = ["-m", "benchmark.report"] if command == "report" else ["-m", "benchmark", command]
    return subprocess.run([sys.executable, *prefix, *flags], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})  # fmt: skip


def table(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv") as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


def by_hand(runs: list[Rows], metric: str) -> tuple[float, float]:
    """Mean over seeds of each run's last-N average, and the Student-t 95% half-width."""
    finals = [statistics.fmean(row[metric] for row in rows[-LAST_N:]) for rows in runs]
    t975 = float(stats.t.ppf(0.975, len(finals) - 1))
    return statistics.fmean(finals), t975 * statistics.stdev(finals) / len(finals) ** 0.5


@pytest.fixture(scope="module")
def tb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 variants x 3 seeds, named as trl_ppo names its runs, one level down (the search is recursive)."""
    root = tmp_path_factory.mktemp("tensorboard")
    for variant in VARIANTS:
        for seed in SEEDS:
            write_tensorboard(root / "runs" / f"{variant}__{seed}__{1700000000 + seed}", numbers(variant, seed))
    return root


@pytest.fixture(scope="module")
def tb_report(tb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("tb-report")
    done = report("--tensorboard-dir", str(tb_dir), "--output-dir", str(out), "--last-n", str(LAST_N))
    assert done.returncode == 0, done.stderr
    return out, done


def test_final_values_equal_the_numbers_written(tb_report: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, done = tb_report
    rows = table(out)
    assert set(rows) == set(VARIANTS)
    for variant in VARIANTS:
        written = [numbers(variant, seed) for seed in SEEDS]
        row = rows[variant]
        assert (row["seeds_done"], row["seeds_expected"], row["reward_n"], row["kl_n"]) == ("3", "3", "3", "3")
        for metric, column in ((REWARD, "reward"), (KL, "kl")):
            mean, ci = by_hand(written, metric)
            assert float(row[f"{column}_mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(row[f"{column}_ci95"]) == pytest.approx(ci, rel=1e-12)
        # Wall time counts from the writer's first event, written when it opened (up to a second before `start`).
        assert float(row["runtime_s"]) == pytest.approx(100 + STEP_S * (STEPS - 1), abs=1.0)
    assert "warning" not in done.stderr  # histograms and text were read past, every name understood
    assert (out / "curves.png").stat().st_size > 0


def test_aggregation_equals_the_wandb_paths_on_the_same_numbers(
    tb_report: tuple[Path, subprocess.CompletedProcess[str]], offline_dir: Path, tmp_path: Path
) -> None:
    for variant in VARIANTS:
        for seed in SEEDS:
            config = {"trl_ppo_trainer_config": {"exp_name": variant, "seed": seed}}
            run = wandb.init(project="tb-parity", name=f"{variant}-s{seed}", config=config)
            for row in numbers(variant, seed):
                run.log(row)
            run.finish()
    wandb.teardown()  # its files complete before the report reads them
    done = report("--wandb-dir", str(offline_dir), "--output-dir", str(tmp_path), "--last-n", str(LAST_N))
    assert done.returncode == 0, done.stderr
    tb_out, _ = tb_report
    columns = ["seeds_done", "seeds_expected"] + [f"{m}_{s}" for m in ("reward", "kl") for s in ("mean", "ci95", "n")]
    tb_rows, wandb_rows = table(tb_out), table(tmp_path)
    assert set(tb_rows) == set(wandb_rows) == set(VARIANTS)
    for variant in VARIANTS:
        for column in columns:
            assert float(tb_rows[variant][column]) == pytest.approx(float(wandb_rows[variant][column]), rel=1e-12)
    order = ["metric", "variant", "_step"]
    tb_curves = pd.read_csv(tb_out / "curves.csv").sort_values(order, ignore_index=True)
    wandb_curves = pd.read_csv(tmp_path / "curves.csv").sort_values(order, ignore_index=True)
    assert len(tb_curves) == 2 * len(VARIANTS) * STEPS
    pd.testing.assert_frame_equal(tb_curves, wandb_curves, rtol=1e-12)


def test_compare_reads_the_same_source(tb_dir: Path, tmp_path: Path) -> None:
    done = report("--tensorboard-dir", str(tb_dir), "--baseline", VARIANTS[0], "--candidate", VARIANTS[1],
                  "--metric", REWARD, "--output-dir", str(tmp_path), command="compare")  # fmt: skip
    assert done.returncode == 0, done.stderr
    (reward,) = json.loads((tmp_path / "compare.json").read_text())["metrics"]
    assert reward["n_baseline"] == reward["n_candidate"] == len(SEEDS)
    assert reward["verdict"] == "better"  # the second variant's reward is 0.5 higher


def test_run_name_pattern_reads_another_layout(tmp_path: Path) -> None:
    layout = {"run-ppo-seed1": ("ppo", 1), "run-ppo-seed2": ("ppo", 2), "run-a2c-seed1": ("a2c", 1),
              "ppo__3__1700000000": ("ppo", 3), "scratch": ("scratch", None)}  # fmt: skip
    for name in layout:
        write_tensorboard(tmp_path / "tb" / name, numbers("ppo", 1, steps=8))
    pattern = r"run-(?P<variant>[a-z0-9]+)-seed(?P<seed>\d+)"
    out = tmp_path / "out"
    done = report("--tensorboard-dir", str(tmp_path / "tb"), "--run-name-pattern", pattern, "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    rows = table(out)
    assert {variant: row["seeds_done"] for variant, row in rows.items()} == {"ppo": "3", "a2c": "1", "scratch": "1"}
    # The name neither pattern matches is its own variant, with a warning naming the folder.
    assert done.stderr.count(UNMATCHED) == 1 and f"{tmp_path / 'tb' / 'scratch'}: " in done.stderr
    found = Found()
    tensorboard.read_runs(tmp_path / "tb", found, pattern)
    assert {run.name: (run.variant, run.seed) for run in found.runs} == layout
    # The pattern must match the whole name: this one would find `ppo` inside `run-ppo-seed1` with re.search.
    partial = tensorboard.run_name_pattern(r"(?P<variant>ppo)-seed(?P<seed>\d)")
    assert tensorboard.variant_and_seed("run-ppo-seed1", [partial]) == ("run-ppo-seed1", None)
    assert "named groups" in (Sources(tensorboard_dir=[tmp_path], run_name_pattern="(?P<variant>.+)").problem() or "")
    assert "not a regular expression" in (Sources(tensorboard_dir=[tmp_path], run_name_pattern="(").problem() or "")


def test_a_damaged_event_file_keeps_the_steps_before_the_damage(tmp_path: Path) -> None:
    rows = numbers("ppo", 1)
    kept = 20
    damage = {}
    for name in ("cut__1__1", "flipped__1__1"):
        flushed = write_tensorboard(tmp_path / "tb" / name, rows, flush_after=kept)
        (events,) = (tmp_path / "tb" / name).glob("events.out.tfevents.*")
        damage[name] = (events, flushed)
    cut, flushed = damage["cut__1__1"]
    with open(cut, "r+b") as f:  # as if killed mid-write: the file ends inside the next record
        f.truncate(flushed + 5)
    flipped, flushed = damage["flipped__1__1"]
    data = bytearray(flipped.read_bytes())
    data[flushed + 20] ^= 0xFF  # inside the next record's data: its checksum no longer holds
    flipped.write_bytes(bytes(data))
    out = tmp_path / "out"
    done = report("--tensorboard-dir", str(tmp_path / "tb"), "--output-dir", str(out), "--last-n", str(LAST_N))
    assert done.returncode == 0, done.stderr
    mean = statistics.fmean(row[REWARD] for row in rows[kept - LAST_N : kept])
    for name, (events, flushed) in damage.items():
        row = table(out)[name.split("__")[0]]
        assert float(row["reward_mean"]) == pytest.approx(mean, rel=1e-12)
        assert f"{events}: truncated or corrupt at byte {flushed}; kept the events before it" in done.stderr
    curves = pd.read_csv(out / "curves.csv")
    assert curves.groupby("variant")["_step"].max().to_dict() == {"cut": kept - 1, "flipped": kept - 1}


def test_hparams_and_text_configs_are_read(tmp_path: Path) -> None:
    rows = numbers("ppo", 1, steps=8)
    for name, learning_rate in (("hparams__1__1", 0.001), ("json__1__1", 0.01), ("cleanrl__1__1", 0.1)):
        folder = tmp_path / "tb" / name
        write_tensorboard(folder, rows)
        with SummaryWriter(str(folder)) as writer:
            if name.startswith("hparams"):  # torch writes them to a sub-folder of the run
                writer.add_hparams({"learning_rate": learning_rate, "batch_size": 8}, {"hparam/reward": 1.0})
            elif name.startswith("json"):
                writer.add_text("config", json.dumps({"learning_rate": learning_rate, "batch_size": 8}))
            else:  # CleanRL's hyperparameters table
                table_text = f"|param|value|\n|-|-|\n|learning_rate|{learning_rate}|\n|batch_size|8|"
                writer.add_text("hyperparameters", table_text)
    out = tmp_path / "out"
    done = report("--tensorboard-dir", str(tmp_path / "tb"), "--group-by", "learning_rate", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    rows_by = table(out)
    assert set(rows_by) == {"learning_rate=0.001", "learning_rate=0.01", "learning_rate=0.1"}
    # The batch size is an int in each config (hparams keep doubles): samples/s = steps x batch size / runtime.
    assert all(row["samples_per_s"] for row in rows_by.values())
    assert UNMATCHED not in done.stderr  # add_hparams' sub-folder is the run's config, not a run


def test_a_trl_ppo_run_logged_to_tensorboard_reports_its_exp_name_and_seed(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "ppo"
    ppo = subprocess.run(
        [sys.executable, "-m", "trl_ppo.ppo",
         "--ppo_config.model_name", str(assets / "gpt2-imdb"),
         "--ppo_config.reward_model", f"sentiment-analysis:{assets / 'distilbert-imdb'}",
         "--query_dataset", str(assets / "imdb"),
         "--ppo_config.batch_size", "8", "--ppo_config.mini_batch_size", "8", "--ppo_config.ppo_epochs", "1",
         "--ppo_config.steps", "16", "--max_new_tokens", "4", "--ppo_config.log_with", "tensorboard",
         "--ppo_config.exp_name", "tb_e2e", "--seed", "3", "--output_dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert ppo.returncode == 0, ppo.stderr[-3000:]
    done = report("--tensorboard-dir", str(out), "--output-dir", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    (row,) = table(tmp_path / "report").values()
    assert (row["variant"], row["seeds_done"], row["reward_n"], row["kl_n"]) == ("tb_e2e", "1", "1", "1")
    assert np.isfinite(float(row["reward_mean"])) and float(row["runtime_s"]) > 0
    assert "warning" not in done.stderr
    found = Found()
    tensorboard.read_runs(out, found)
    (run,) = found.runs
    assert (run.variant, run.seed, run.state, list(run.history["_step"])) == ("tb_e2e", 3, "finished", [0, 1])
    assert "env/reward_dist" not in run.history  # a histogram, not a curve
