"""Which of the workload's packages a command looked for, it or any process it started: recorder/sitecustomize.py,
put on PYTHONPATH, writes each look to a file. And a job that writes a real offline W&B run, importing nothing heavy
itself, so that a sweep of it gives the report and compare something to read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from trl_ppo.config import WORKLOAD_PACKAGES

# trl_ppo's dependencies (the `ppo` extra): the harness, the report and compare must not need them.
HEAVY = WORKLOAD_PACKAGES
SITECUSTOMIZE = Path(__file__).parent / "recorder" / "sitecustomize.py"

# Imports every module of the harness but its entry points (they run the CLI) and the modules named as arguments.
IMPORT_ALL = """\
import importlib, pkgutil, sys, benchmark
for module in pkgutil.walk_packages(benchmark.__path__, "benchmark."):
    if module.name.rpartition(".")[2] != "__main__" and module.name not in sys.argv[1:]:
        importlib.import_module(module.name)
"""

JOB_NAME = "job.py"
# The harness appends `--seed N` and hands the run its id and group (WANDB_RUN_ID, WANDB_RUN_GROUP).
JOB = """\
import sys
import wandb

seed = int(sys.argv[sys.argv.index("--seed") + 1])
offset = float(sys.argv[sys.argv.index("--offset") + 1]) if "--offset" in sys.argv else 0.0
run = wandb.init(mode="offline", project="p", config={"seed": seed})
for step in range(12):
    run.log({"env/reward_mean": offset + 0.1 * step + 0.01 * seed, "objective/kl": 0.02 * step + 0.001 * seed})
run.finish()
"""


def recording(folder: Path, env: dict[str, str]) -> dict[str, str]:
    """`env` with the recorder in `folder` (the only entry of PYTHONPATH) and its log beside it. It shadows any other
    sitecustomize (Debian's Python has one, for apport's crash hook): fine in a test."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SITECUSTOMIZE, folder / SITECUSTOMIZE.name)
    return {**env, "PYTHONPATH": str(folder), "HEAVY_IMPORTS": ",".join(HEAVY),
            "HEAVY_IMPORTS_LOG": str(folder / "looked-for.jsonl")}


def looked_for(env: dict[str, str], *, jobs: bool = False) -> list[dict]:
    """The looks recorded so far ({name, argv, where} each); the sweep's jobs' own left out unless `jobs`: they
    are the user's code (wandb in them may look for torch), not the harness."""
    log = Path(env["HEAVY_IMPORTS_LOG"])
    looks = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [look for look in looks if jobs or Path(look["argv"][0]).name != JOB_NAME]


def forget(env: dict[str, str]) -> None:
    """Start the record afresh (after checking that the recorder records)."""
    Path(env["HEAVY_IMPORTS_LOG"]).unlink(missing_ok=True)


def write_job(folder: Path) -> Path:
    (folder / JOB_NAME).write_text(JOB)
    return folder / JOB_NAME
