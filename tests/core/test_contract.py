"""The job contract's pure parts, without a scheduler: the plan as the manifest keeps it, the job
environment every backend hands its jobs, and how jobs are grouped into arrays."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import tyro

from benchmark.backends import name_wandb_run, task_env, variant_env
from benchmark.backends.slurm import SlurmBackend, array_id, explicit_options
from benchmark.backends.submitit import executor_parameters
from benchmark.cli import LaunchArgs
from benchmark.manifest import FollowUpRecord, JobRecord, Manifest
from benchmark.plan import Plan, PlanError, SlurmSettings, SubmititSettings, Variant, make_plan
from benchmark.redact import Redactor


def plan_of(*argv: str) -> Plan:
    plan, _ = make_plan(tyro.cli(LaunchArgs, args=list(argv)).request(), list(argv), Redactor({}))
    return plan


def fake_srun(folder: Path) -> str:
    """A PATH on which `srun` exists, as on a Slurm login node."""
    folder.mkdir()
    srun = folder / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    return str(folder)


def test_the_plan_is_read_back_typed_with_every_choice_settled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", fake_srun(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    plan = plan_of("--backend", "submitit", "--command", "a=python a.py", "--num-seeds", "2",
                   "--slurm-extra=--constraint=h100", "--then", "echo done", "--max-retries", "2")
    # `--submitit-cluster auto` is decided at launch, where srun is: a later `status` without srun on
    # PATH must not take the sweep for a local one (its Slurm tasks would turn LOST).
    assert isinstance(plan.backend, SubmititSettings) and plan.backend.cluster == "slurm"
    records = [JobRecord.from_job(job, "x.log") for job in plan.jobs()]
    Manifest.create(tmp_path / "r", plan, records, FollowUpRecord(command="echo done"))
    loaded = Manifest.load(tmp_path / "r")
    assert loaded.plan == plan and loaded.plan.backend.extra == ("--constraint=h100",)
    assert loaded.followup == FollowUpRecord(command="echo done") and list(loaded.jobs) == ["a/1", "a/2"]


def test_a_slurm_plan_keeps_the_template_it_was_given(tmp_path: Path) -> None:
    template = tmp_path / "my.slurm_template"
    template.write_text("#!/bin/bash\n")
    plan = plan_of("--command", "true", "--slurm-template-path", str(template), "--slurm-partition", "gpu")
    assert isinstance(plan.backend, SlurmSettings) and plan.backend.template == str(template)
    assert explicit_options(plan.backend) == ["--partition=gpu"]
    with pytest.raises(PlanError, match="no such file"):
        plan_of("--command", "true", "--slurm-template-path", str(tmp_path / "nope"))


@pytest.mark.parametrize("backend", [("--workers", "1"), ("--backend", "submitit", "--submitit-cluster", "local")])
def test_then_needs_slurm(backend: tuple[str, ...]) -> None:
    with pytest.raises(PlanError, match="--then needs Slurm"):
        plan_of("--command", "true", "--then", "echo done", *backend)


def test_a_variant_named_then_is_an_array_like_any_other() -> None:
    plan = plan_of("--backend", "slurm", "--command", "then=python a.py", "--command", "b=python b.py",
                   "--num-seeds", "2")
    records = [JobRecord.from_job(job, "x.log") for job in plan.jobs()]
    groups = SlurmBackend(plan, Path("r")).batches(records, [])
    assert [(g[0].variant, [r.seed for r in g]) for g in groups] == [("then", [1, 2]), ("b", [1, 2])]


def test_the_job_environment_keeps_the_users_tags_and_names_each_run(tmp_path: Path) -> None:
    plan = Plan(variants=(Variant("v", "python a.py"),), seeds=(1,), wandb_tags=("v0.1", "pr-7"))
    env = variant_env(plan, tmp_path, "v", {"WANDB_TAGS": "mine,v0.1"})
    assert env == {"BENCHMARK_RUN_DIR": str(tmp_path.resolve()), "BENCHMARK_VARIANT": "v",
                   "WANDB_RUN_GROUP": "v", "WANDB_TAGS": "mine,v0.1,pr-7"}
    assert variant_env(plan, tmp_path, "v", {"WANDB_RUN_GROUP": "theirs"})["WANDB_RUN_GROUP"] == "theirs"
    record = JobRecord(id="v/1", variant="v", seed=1, command="python a.py --seed 1")
    name_wandb_run(record)
    # Every backend's jobs get the run id the manifest records: a report finds each job's run by it.
    assert task_env(record, {}) == {"BENCHMARK_JOB_ID": "v/1", "BENCHMARK_SEED": "1",
                                    "WANDB_RUN_ID": record.wandb_id, "WANDB_NAME": record.wandb_name}
    assert task_env(record, {"WANDB_NAME": "mine"})["WANDB_NAME"] == "mine"


def test_array_ids() -> None:
    assert array_id("123_4") == "123" and array_id("125") == "125"


def test_submitit_parameters_follow_the_slurm_flags() -> None:
    settings = SubmititSettings(gpus_per_task=1, total_cpus=12, ntasks=2, nodes=1, time="1:00:00",
                                extra=("--constraint=h100", "--exclusive"), cluster="slurm", workers=3)
    parameters = executor_parameters(settings, "v", tasks=5)
    assert parameters["slurm_cpus_per_gpu"] == 6 and parameters["tasks_per_node"] == 2
    assert parameters["slurm_array_parallelism"] == 3
    assert parameters["slurm_additional_parameters"] == {"hold": True, "constraint": "h100", "exclusive": True,
                                                         "time": "1:00:00"}
    with pytest.raises(PlanError, match="not a multiple"):
        executor_parameters(SubmititSettings(ntasks=3, nodes=2, cluster="slurm"), "v", tasks=1)
