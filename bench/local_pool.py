"""How much the local pool costs: our harness against TRL's bare thread pool, measured in one run.

    python bench/local_pool.py [--jobs 200] [--workers 8] [--repeats 3]

Two workloads: `true` (measures pure overhead) and a Python one-liner sleeping 50 ms (on a small
machine, Python's start-up rather than the sleep dominates). For each, the whole-process wall time of
  - ours: `python benchmark/benchmark.py ...` with logs, manifest and exit codes written, and
  - TRL's approach: tyro imported, then ThreadPoolExecutor + Popen(shlex.split(...)), nothing kept,
as the median of --repeats runs, the overhead per job, and makespan / ideal makespan, where the ideal
is ceil(jobs / workers) times one job's own duration measured alone.
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
import shlex, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
import tyro  # TRL's CLI imports it: part of its whole-process time

def run_experiment(command):
    print(f"running {command}")
    assert subprocess.Popen(shlex.split(command)).wait() == 0  # raised in a worker thread, never seen

command, num_seeds, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
commands = [" ".join([command, "--seed", str(seed)]) for seed in range(1, num_seeds + 1)]
with ThreadPoolExecutor(max_workers=workers) as executor:
    for command in commands:
        executor.submit(run_experiment, command)
"""

def wall(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return took


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


def trl(command: str, jobs: int, workers: int, cwd: Path) -> float:
    return wall([sys.executable, "-c", TRL_POOL, command, str(jobs), str(workers)], cwd)


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
            ours_runs, trl_runs, makespans = [], [], []
            for _ in range(args.repeats):
                took, records = ours(command, args.jobs, args.workers, cwd)
                ours_runs.append(took)
                makespans.append(max(r["end"] for r in records.values()) - min(r["start"] for r in records.values()))
                trl_runs.append(trl(command, args.jobs, args.workers, cwd))
            ours_s, trl_s = statistics.median(ours_runs), statistics.median(trl_runs)
            ideal = math.ceil(args.jobs / args.workers) * job_alone(command, cwd)
            print(f"\n{label}: one job alone {ideal / math.ceil(args.jobs / args.workers) * 1000:.1f} ms, "
                  f"ideal makespan {ideal:.2f} s")
            print(f"  {'':22}{'whole process':>14}{'per job':>10}{'/ ideal':>9}")
            print(f"  {'ours (logs+manifest)':22}{ours_s:>12.3f} s{ours_s / args.jobs * 1000:>7.2f} ms"
                  f"{ours_s / ideal:>8.2f}x")
            print(f"  {'TRL thread pool':22}{trl_s:>12.3f} s{trl_s / args.jobs * 1000:>7.2f} ms{trl_s / ideal:>8.2f}x")
            print(f"  ours / TRL: {ours_s / trl_s:.2f}x whole process; "
                  f"ours from first start to last end: {statistics.median(makespans):.3f} s")


if __name__ == "__main__":
    main()
