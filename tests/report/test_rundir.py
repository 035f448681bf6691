"""`--run-dir`: the harness's manifest says which seeds were expected and what became of each job."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import wandb

from benchmark import manifest as harness
from benchmark.manifest import JobRecord, Manifest
from benchmark.plan import Plan, Variant
from benchmark.report import main, rundir
from benchmark.report.offline import find_run_files, read_run

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
    plan = Plan(
        variants=tuple(Variant(name, "python ppo.py") for name in ("baseline", "accu", "peft")),
        seeds=(1, 2, 3),
        cwd=str(sweep.wandb_dir),  # the jobs' working dir: their runs are in ./wandb there
    )
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
    # Two GPUs per job: the manifest's count, whatever W&B's metadata says.
    runtimes = [read_run(sweep.runs[("sentiment_tuning", s)].file)[0].runtime for s in (1, 2)]
    assert float(baseline["gpu_hours"]) == pytest.approx(2 * sum(runtimes) / 3600, rel=1e-3)
    assert (accu["seeds_done"], accu["seeds_running"], accu["missing_seeds"], accu["reward_n"]) == ("1", "1", "3", "1")
    assert (peft["seeds_done"], peft["missing_seeds"], peft["reward_n"]) == ("0", "1 2 3", "0")
    markdown = (out / "summary.md").read_text()
    assert "1 still running; missing seeds 3" in markdown and "missing seeds 1, 2, 3" in markdown
    assert (out / "curves.png").is_file()
    # A job without data is a table entry, not a run "missing a metric".
    assert "missing from runs" not in capsys.readouterr().err


def test_only_the_sweeps_files_are_decoded_while_its_ids_name_them(sweep: Sweep, tmp_path: Path) -> None:
    plan = Plan(variants=(Variant("baseline", "python ppo.py"),), seeds=(1, 2, 3), cwd=str(sweep.wandb_dir))
    ours = [sweep.runs["sentiment_tuning", s].file for s in (1, 2)]
    records = [job("baseline", s, harness.COMPLETED, run_id(sweep, ("sentiment_tuning", s))) for s in (1, 2)]
    pending = job("baseline", 3, harness.PENDING, "bm1234-77-2")  # submitted, not started: no run yet
    manifest = Manifest.create(tmp_path / "a", plan, [*records, pending])
    assert sorted(rundir.run_files(manifest)) == sorted(ours)
    # A job that ran under an id the harness never knew: every run in the folder may be it.
    pending.state = harness.COMPLETED
    assert sorted(rundir.run_files(manifest)) == sorted(find_run_files(sweep.wandb_dir))


def test_runs_without_the_harness_ids_match_by_group_and_seed(offline_dir: Path, tmp_path: Path) -> None:
    """TRL's own Slurm template passes no WANDB_RUN_ID to the tasks: W&B picks the ids, the group is
    the variant (WANDB_RUN_GROUP reaches sbatch's environment) and the seed is in the config."""
    for group, seed, level in [("baseline", 1, 1.0), ("baseline", 2, 2.0), ("other", 3, 100.0)]:
        run = wandb.init(project="trl", group=group, config={"trl_ppo_trainer_config": {"seed": seed}})
        for step in range(5):
            run.log({"env/reward_mean": level, "objective/kl": 0.1 * step})
        run.finish()
    plan = Plan(variants=(Variant("baseline", "python ppo.py"),), seeds=(1, 2, 3), cwd=str(offline_dir))
    # The ids the harness recorded (Slurm's `<prefix>-<job id>-<task>`) name no run.
    records = [job("baseline", s, harness.COMPLETED, f"bm1234-77-{s - 1}") for s in (1, 2, 3)]
    run_dir = tmp_path / "sweep"
    Manifest.create(run_dir, plan, records)

    out = tmp_path / "out"
    assert main(["--run-dir", str(run_dir), "--output-dir", str(out)]) == 0
    with open(out / "summary.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    # Seeds 1 and 2 found by group and seed; the other group's seed-3 run is not baseline's seed 3.
    assert set(rows) == {"baseline"}
    baseline = rows["baseline"]
    assert (baseline["seeds_done"], baseline["seeds_expected"], baseline["missing_seeds"]) == ("2", "3", "3")
    assert (baseline["reward_n"], float(baseline["reward_mean"])) == ("2", pytest.approx(1.5))


def test_not_a_run_dir(tmp_path: Path) -> None:
    assert main(["--run-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2


JOB = """
import sys, wandb
seed = int(sys.argv[sys.argv.index("--seed") + 1])
# The harness hands the run its id, name and group through WANDB_RUN_ID, WANDB_NAME, WANDB_RUN_GROUP.
run = wandb.init(project="harness", config={"trl_ppo_trainer_config": {"exp_name": "job", "seed": seed}})
for step in range(20):
    run.log({"env/reward_mean": step * seed, "objective/kl": 0.1 * step})
run.finish(exit_code=1 if "--fail" in sys.argv else 0)
sys.exit(1 if "--fail" in sys.argv else 0)
"""


def test_report_on_a_sweep_run_by_the_harness(tmp_path: Path) -> None:
    """The real harness runs jobs that log with the real wandb; the report finds each job's run."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # runs land in the jobs' ./wandb
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    run_dir = tmp_path / "sweep"
    job = f"{sys.executable} {script}"  # this interpreter: a bare `python` on PATH may lack wandb
    launch = [sys.executable, "-m", "benchmark", "--num-seeds", "2", "--workers", "2", "--run-dir", str(run_dir),
              "--command", f"ok={job}", "--command", f"bad={job} --fail"]  # fmt: skip
    subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 4

    out = tmp_path / "out"
    assert main(["--run-dir", str(run_dir), "--output-dir", str(out)]) == 0
    with open(out / "summary.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert (rows["ok"]["seeds_done"], rows["ok"]["seeds_expected"], rows["ok"]["reward_n"]) == ("2", "2", "2")
    assert float(rows["ok"]["reward_mean"]) == pytest.approx((1 + 2) / 2 * sum(range(10, 20)) / 10)
    assert (rows["bad"]["seeds_done"], rows["bad"]["seeds_crashed"], rows["bad"]["reward_n"]) == ("0", "2", "0")
