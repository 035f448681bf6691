"""How much the local pool costs: our harness against TRL's bare thread pool, measured in one run.

    python bench/local_pool.py [--jobs 200] [--workers 8] [--repeats 5]

Two workloads: `true` (measures pure overhead) and a Python one-liner sleeping 50 ms (on a small
machine, Python's start-up rather than the sleep dominates). For each, the whole-process wall time of
  - ours: `python benchmark/benchmark.py ...` with logs, manifest and exit codes written, and
  - TRL's approach, the goal's baseline: tyro imported, then ThreadPoolExecutor + Popen(shlex.split(...)),
    nothing kept (0.37 s here for 200 x true, as the issue measured TRL at 0.39 s), and
  - TRL's script as released: argparse, `requests` imported, each job's output captured through pipes,
as the median of --repeats interleaved rounds (each contender first in turn), the overhead per job
(whole process / jobs), the CPU seconds of the whole process tree, and the makespan (first job start
to last job end) against the ideal: ceil(jobs / workers) times one job's duration alone. Ratios are
the median of each round's ratio: on a shared machine the load drifts between rounds by more than
the differences measured.

All three run with bytecode caches, as an installed package does (PYTHONDONTWRITEBYTECODE, set on
some machines, would make ours compile its modules on every start), after one untimed warm-up round.
Ours writes a file per job (its log); what creating a file costs on the run dir's filesystem is
measured and printed too: on an ext4 without journal that has seen many deletions it rose from
0.07 ms to over 1 ms here, while TRL's pool creates no file at all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

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


class Run(NamedTuple):
    wall: float  # whole process, seconds
    cpu: float  # the process and all its children, seconds
    makespan: float | None  # first job start to last job end


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str], cwd: Path) -> tuple[float, float, str]:
    """Whole-process wall time, CPU seconds of it and its children, and what it printed. On 2 cores
    the sleep jobs are CPU-bound, so the CPU seconds are what the makespan follows."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    out = process.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    took = time.perf_counter() - start
    process.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{argv[:3]} failed ({code}):\n{out[-4000:]}")
    return took, usage.ru_utime + usage.ru_stime, out


def ours(command: str, jobs: int, workers: int, cwd: Path) -> Run:
    # A fresh folder each round, all removed at the end: deleting the last round's files just before
    # this one would slow the file creations measured here (ext4 skips recently freed inodes).
    run_dir = Path(tempfile.mkdtemp(dir=cwd)) / "run"
    took, cpu, _ = timed(
        [sys.executable, str(REPO / "benchmark" / "benchmark.py"), "--command", command, "--num-seeds", str(jobs),
         "--workers", str(workers), "--no-auto-tag", "--run-dir", str(run_dir)],
        cwd,
    )
    records = {}
    for line in (run_dir / "manifest.jsonl").read_text().splitlines()[1:]:
        job = json.loads(line)["job"]
        records[job["id"]] = job
    assert len(records) == jobs and all(r["state"] == "COMPLETED" for r in records.values()), "a job did not complete"
    makespan = max(r["end"] for r in records.values()) - min(r["start"] for r in records.values())
    return Run(took, cpu, makespan)


def trl(command: str, jobs: int, workers: int, cwd: Path) -> Run:
    took, cpu, out = timed([sys.executable, "-c", TRL_POOL, command, str(jobs), str(workers)], cwd)
    return Run(took, cpu, float(out.split()[-1]))


def trl_script(command: str, jobs: int, workers: int, cwd: Path) -> Run:
    took, cpu, _ = timed([sys.executable, "-c", TRL_SCRIPT, "--command", command, "--num-seeds", str(jobs),
                          "--workers", str(workers)], cwd)
    return Run(took, cpu, None)


def file_creation_ms(where: Path, files: int = 200) -> float:
    """CPU milliseconds to create one empty file in a fresh folder under `where`."""
    folder = Path(tempfile.mkdtemp(dir=where))
    start = time.process_time()
    for i in range(files):
        (folder / f"seed-{i}.log").open("wb").close()
    return (time.process_time() - start) / files * 1000


def job_alone(command: str, cwd: Path, repeats: int = 10) -> float:
    return statistics.median(timed(["/bin/sh", "-c", command + " --seed 1"], cwd)[0] for _ in range(repeats))


def paired(ours_runs: list[Run], base_runs: list[Run], field: str) -> str:
    """Median of the per-round ratios (each round's runs saw the same machine load), and their range:
    how far apart rounds are shows how much of a few-percent difference is noise."""
    ratios = sorted(getattr(a, field) / getattr(b, field) for a, b in zip(ours_runs, base_runs, strict=True))
    return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.jobs} jobs, {args.workers} workers, {os.cpu_count()} cores, median of {args.repeats} runs, "
          f"load {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        print(f"creating a file in {tmp}: {file_creation_ms(cwd):.2f} ms CPU")
        for label, command in (("true", "true"), ("python sleep 50 ms", SLEEP_JOB)):
            contenders = {"ours (logs+manifest)": ours, "TRL thread pool": trl, "TRL's script as is": trl_script}
            runs: dict[str, list[Run]] = {name: [] for name in contenders}
            ours(command, args.jobs, args.workers, cwd)  # warm-up: bytecode caches, page cache
            trl(command, args.jobs, args.workers, cwd)
            order = list(contenders)
            for _ in range(args.repeats):  # interleaved, so that all three see the same machine load,
                for name in order:  # and in turn first, so that none always follows the same one
                    runs[name].append(contenders[name](command, args.jobs, args.workers, cwd))
                order = order[1:] + order[:1]
            ideal = math.ceil(args.jobs / args.workers) * job_alone(command, cwd)
            print(f"\n{label}: one job alone {ideal / math.ceil(args.jobs / args.workers) * 1000:.1f} ms, "
                  f"ideal makespan {ideal:.2f} s")
            print(f"  {'':22}{'whole process':>14}{'per job':>10}{'CPU':>9}{'makespan':>11}{'/ ideal':>9}")
            for name, series in runs.items():
                took = statistics.median(r.wall for r in series)
                cpu = statistics.median(r.cpu for r in series)
                spans = [r.makespan for r in series if r.makespan is not None]
                span = statistics.median(spans) if spans else None
                makespan = f"{span:>9.3f} s{span / ideal:>8.2f}x" if span else f"{'-':>11}{'-':>9}"
                print(f"  {name:22}{took:>12.3f} s{took / args.jobs * 1000:>7.2f} ms{cpu:>7.2f} s{makespan}")
            mine, pool, script = runs.values()
            print(f"  ours / TRL thread pool, median (range) of per-round ratios: {paired(mine, pool, 'wall')} whole "
                  f"process, {paired(mine, pool, 'makespan')} makespan, {paired(mine, pool, 'cpu')} CPU")
            print(f"  ours / TRL's script: {paired(mine, script, 'wall')} whole process")
        print(f"\ncreating a file in {tmp}, after the runs: {file_creation_ms(cwd):.2f} ms CPU")


if __name__ == "__main__":
    main()
