"""How much the local pool costs: our harness against TRL's bare thread pool, measured in one run.

    python bench/local_pool.py [--jobs 200] [--workers 8] [--repeats 3]

Two workloads: `true` (measures pure overhead) and a Python one-liner sleeping 50 ms (on a small
machine, Python's start-up rather than the sleep dominates). For each, the whole-process wall time of
  - ours: `python benchmark/benchmark.py ...` with logs, manifest and exit codes written, and
  - TRL's approach, the goal's baseline: tyro imported, then ThreadPoolExecutor + Popen(shlex.split(...)),
    nothing kept (0.37 s here for 200 x true, as the issue measured TRL at 0.39 s), and
  - TRL's script as released: argparse, `requests` imported, each job's output captured through pipes,
as the median of --repeats runs, the overhead per job (whole process / jobs), and the makespan (first
job start to last job end) against the ideal: ceil(jobs / workers) times one job's duration alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLEEP_JOB = f'{sys.executable} -c "import time; time.sleep(0.05)"'

# TRL's benchmark/benchmark.py pool, minus its GitHub lookup: run and forget.
TRL_POOL = """
import shlex, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
import tyro  # TRL's CLI imports it: part of its whole-process time

spans = []  # not TRL's: when each job started and ended, for the makespan

def run_experiment(command):
    print(f"running {command}")
    start = time.time()
    assert subprocess.Popen(shlex.split(command)).wait() == 0  # raised in a worker thread, never seen
    spans.append((start, time.time()))

command, num_seeds, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
commands = [" ".join([command, "--seed", str(seed)]) for seed in range(1, num_seeds + 1)]
with ThreadPoolExecutor(max_workers=workers) as executor:
    for command in commands:
        executor.submit(run_experiment, command)
print("makespan", max(end for _, end in spans) - min(start for start, _ in spans))
"""

# TRL's benchmark/benchmark.py as released (argparse, `requests` imported for its GitHub lookup, each
# job's output captured through pipes), reproduced without the lookup: run with --auto-tag off.
TRL_SCRIPT = """
import argparse, shlex, subprocess
from concurrent.futures import ThreadPoolExecutor
import requests  # imported at the top of TRL's script

def run_experiment(command):
    print(f"running {command}")
    process = subprocess.Popen(shlex.split(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.communicate()
    assert process.returncode == 0

parser = argparse.ArgumentParser()
parser.add_argument("--command", type=str, default="")
parser.add_argument("--num-seeds", type=int, default=3)
parser.add_argument("--start-seed", type=int, default=1)
parser.add_argument("--workers", type=int, default=0)
args = parser.parse_args()
commands = [" ".join([args.command, "--seed", str(args.start_seed + s)]) for s in range(args.num_seeds)]
executor = ThreadPoolExecutor(max_workers=args.workers)
for command in commands:
    executor.submit(run_experiment, command)
executor.shutdown(wait=True)
"""


def wall(argv: list[str], cwd: Path) -> float:
    return timed(argv, cwd)[0]


def timed(argv: list[str], cwd: Path) -> tuple[float, str]:
    """Whole-process wall time, and what the process printed."""
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return took, result.stdout


def ours(command: str, jobs: int, workers: int, cwd: Path) -> tuple[float, dict]:
    run_dir = cwd / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    took = wall(
        [sys.executable, str(REPO / "benchmark" / "benchmark.py"), "--command", command, "--num-seeds", str(jobs),
         "--workers", str(workers), "--no-auto-tag", "--run-dir", str(run_dir)],
        cwd,
    )
    records = {}
    for line in (run_dir / "manifest.jsonl").read_text().splitlines()[1:]:
        job = json.loads(line)["job"]
        records[job["id"]] = job
    assert len(records) == jobs and all(r["state"] == "COMPLETED" for r in records.values()), "a job did not complete"
    return took, records


def trl(command: str, jobs: int, workers: int, cwd: Path) -> tuple[float, float]:
    """Whole-process wall time and makespan (first job start to last job end) of TRL's pool."""
    took, out = timed([sys.executable, "-c", TRL_POOL, command, str(jobs), str(workers)], cwd)
    return took, float(out.split()[-1])


def trl_script(command: str, jobs: int, workers: int, cwd: Path) -> float:
    return wall([sys.executable, "-c", TRL_SCRIPT, "--command", command, "--num-seeds", str(jobs),
                 "--workers", str(workers)], cwd)


def job_alone(command: str, cwd: Path, repeats: int = 10) -> float:
    return statistics.median(wall(["/bin/sh", "-c", command + " --seed 1"], cwd) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.jobs} jobs, {args.workers} workers, {os.cpu_count()} cores, median of {args.repeats} runs")

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for label, command in (("true", "true"), ("python sleep 50 ms", SLEEP_JOB)):
            # Interleave the two so both see the same machine load.
            ours_runs, trl_runs, script_runs, makespans, trl_makespans = [], [], [], [], []
            for _ in range(args.repeats):
                took, records = ours(command, args.jobs, args.workers, cwd)
                ours_runs.append(took)
                makespans.append(max(r["end"] for r in records.values()) - min(r["start"] for r in records.values()))
                took, makespan = trl(command, args.jobs, args.workers, cwd)
                trl_runs.append(took)
                trl_makespans.append(makespan)
                script_runs.append(trl_script(command, args.jobs, args.workers, cwd))
            ours_s, trl_s = statistics.median(ours_runs), statistics.median(trl_runs)
            script_s = statistics.median(script_runs)
            ideal = math.ceil(args.jobs / args.workers) * job_alone(command, cwd)
            print(f"\n{label}: one job alone {ideal / math.ceil(args.jobs / args.workers) * 1000:.1f} ms, "
                  f"ideal makespan {ideal:.2f} s")
            print(f"  {'':22}{'whole process':>14}{'per job':>10}{'makespan':>10}{'/ ideal':>9}")
            rows = (
                ("ours (logs+manifest)", ours_s, statistics.median(makespans)),
                ("TRL thread pool", trl_s, statistics.median(trl_makespans)),
                ("TRL's script as is", script_s, None),
            )
            for name, took, makespan in rows:
                spans = f"{makespan:>8.3f} s{makespan / ideal:>8.2f}x" if makespan else f"{'-':>10}{'-':>9}"
                print(f"  {name:22}{took:>12.3f} s{took / args.jobs * 1000:>7.2f} ms{spans}")
            print(f"  ours / TRL thread pool: {ours_s / trl_s:.2f}x whole process, "
                  f"{statistics.median(makespans) / statistics.median(trl_makespans):.2f}x makespan; "
                  f"ours / TRL's script: {ours_s / script_s:.2f}x whole process")


if __name__ == "__main__":
    main()
