"""How fast a sweep reaches Slurm: the harness's job arrays against one sbatch per task, in one run.

    python bench/slurm_submit.py [--variants 10] [--seeds 100] [--repeats 1]

Needs a reachable cluster (`bash scripts/slurm-up.sh` starts the lab one). Measures, for
--variants x --seeds tasks of `true`:
  - ours: one `python benchmark/benchmark.py --command v0=true ... --num-seeds N` invocation, its
    whole-process wall time until every task is submitted (median of --repeats; the manifest must
    hold one job id per task), the sbatch calls it made (counted by an `sbatch` wrapper put first on
    PATH, which logs when each call began and ended) and, for the last repeat, the time from the
    invocation until the last task ended (the tasks' exit files, RUN_DIR/exit/<job>_<index>);
  - naive: one `sbatch` per task of a minimal script, from a loop in this process, as a harness
    without job arrays must do. Submitted held and cancelled: only submission is timed.
Every job this script submits runs at --nice=10000, so other users of a shared cluster go first, and
is cancelled at the end, whatever happens. Each task stays a job record in slurmctld for MinJobAge
(300 s on the lab cluster) after it ends, and at MaxJobCount records (10,000) sbatch stalls for
everyone: a run needs (--repeats + 1) x tasks records free, and refuses to start without them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark.manifest import MANIFEST_NAME, Manifest

REPO = Path(__file__).resolve().parents[1]
NICE = "--nice=10000"
# Runs the real sbatch and logs when each call began and ended; the harness sees sbatch's own output
# and exit code.
SBATCH_WRAPPER = """#!/bin/bash
start=$EPOCHREALTIME
{sbatch} "$@"
code=$?
echo "$start $EPOCHREALTIME" >> "$SBATCH_CALLS"
exit $code
"""
NAIVE_SCRIPT = f"""#!/bin/sh
#SBATCH --output=/dev/null
#SBATCH --cpus-per-task=1
#SBATCH {NICE}
true
"""


def harness(
    run_dir: Path, variants: int, seeds: int, env: dict[str, str]
) -> tuple[float, float, float, list[str | None]]:
    """When our invocation started (epoch), its wall and CPU seconds, and the job ids its manifest holds."""
    commands = [arg for i in range(variants) for arg in ("--command", f"v{i}=true")]
    argv = [
        sys.executable, str(REPO / "benchmark" / "benchmark.py"), *commands, "--num-seeds", str(seeds),
        "--workers", str(seeds),  # every task at once (0 would write the scripts and submit nothing)
        "--slurm-template-path", str(REPO / "templates" / "trl.slurm_template"), "--slurm-gpus-per-task", "0",
        "--slurm-total-cpus", "1", "--seed-flag", "", f"--slurm-extra={NICE}", "--run-dir", str(run_dir),
    ]
    started, start, cpu = time.time(), time.perf_counter(), children_cpu()
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    took, cpu = time.perf_counter() - start, children_cpu() - cpu
    ids = manifest_job_ids(run_dir)
    if result.returncode != 0:
        cancel(ids)
        raise SystemExit(f"the harness failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return started, took, cpu, ids


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the harness, and its sbatch and git calls):
    unlike wall time, it hardly moves when other work shares the machine."""
    t = os.times()
    return t.children_user + t.children_system


def manifest_job_ids(run_dir: Path) -> list[str | None]:
    """The job id of each task in the run's manifest (None: not submitted); none without a manifest."""
    if not (run_dir / MANIFEST_NAME).exists():
        return []
    return [record.scheduler_id for record in Manifest.load(run_dir).jobs.values()]


def wait_for_exit_files(run_dir: Path, count: int, timeout: float) -> list[Path]:
    """The exit files of the run's tasks once all `count` exist, or as many as appeared by `timeout`."""
    exit_dir = run_dir / "exit"
    deadline = time.monotonic() + timeout
    while True:
        files = [p for p in exit_dir.glob("*") if not p.name.endswith(".tmp")] if exit_dir.exists() else []
        if len(files) >= count or time.monotonic() > deadline:
            return files
        time.sleep(0.2)


def naive(tmp: Path, tasks: int) -> tuple[list[float], float]:
    """One held sbatch per task, all cancelled afterwards: each call's wall time, and their CPU seconds."""
    script = tmp / "naive.sh"
    script.write_text(NAIVE_SCRIPT)
    times: list[float] = []
    ids: list[str | None] = []
    cpu = children_cpu()
    try:
        for _ in range(tasks):
            start = time.perf_counter()
            result = subprocess.run(["sbatch", "--parsable", "--hold", str(script)], capture_output=True, text=True,
                                    cwd=tmp)
            times.append(time.perf_counter() - start)
            if result.returncode != 0:
                raise SystemExit(f"sbatch failed: {result.stderr.strip()}")
            ids.append(result.stdout.strip().split(";")[0])
    finally:
        cancel(ids)
    return times, children_cpu() - cpu


def cancel(job_ids: list[str | None]) -> None:
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids if job_id})
    for start in range(0, len(arrays), 500):  # keeps the command line short
        subprocess.run(["scancel", *arrays[start:start + 500]], capture_output=True)


def settle(job_ids: list[str | None], timeout: float = 60) -> None:
    """Wait until cancelled jobs have left the queue, so the next run meets an idle controller."""
    arrays = ",".join(sorted({job_id.split("_")[0] for job_id in job_ids if job_id}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not subprocess.run(["squeue", "-h", "-j", arrays], capture_output=True, text=True).stdout.strip():
            return
        time.sleep(0.5)


def free_job_records() -> int:
    """How many more jobs slurmctld accepts before MaxJobCount (array tasks count one each)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    limit = next(int(line.split("=")[1]) for line in config.splitlines() if line.startswith("MaxJobCount"))
    held = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True)
    return limit - len(held.stdout.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1, help="harness submissions; all but the last are cancelled")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the last task to end")
    args = parser.parse_args()
    real_sbatch = shutil.which("sbatch")
    if real_sbatch is None:
        raise SystemExit("sbatch is not on PATH: start the lab cluster with `bash scripts/slurm-up.sh`")
    tasks = args.variants * args.seeds
    if (free := free_job_records()) < tasks * (args.repeats + 1):
        raise SystemExit(f"slurmctld takes {free} more job records, this run needs {tasks * (args.repeats + 1)}: "
                         "wait for ended jobs to age out (MinJobAge) and try again")
    load = os.getloadavg()[0]
    print(f"{args.variants} variants x {args.seeds} seeds = {tasks} tasks of `true`; {os.cpu_count()} cores, "
          f"load average {load:.1f}")

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "bin").mkdir()
        wrapper = tmp / "bin" / "sbatch"
        wrapper.write_text(SBATCH_WRAPPER.format(sbatch=real_sbatch))
        wrapper.chmod(0o755)
        env = {**os.environ, "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}"}

        walls, cpus, calls, phases = [], [], [], []
        ids: list[str | None] = []
        try:
            for repeat in range(args.repeats):
                run_dir = tmp / f"run{repeat}"
                log = tmp / f"sbatch-calls-{repeat}"
                env["SBATCH_CALLS"] = str(log)
                started, took, cpu, ids = harness(run_dir, args.variants, args.seeds, env)
                spans = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
                walls.append(took)
                cpus.append(cpu)
                calls.append(len(spans))
                # Before the first sbatch, from its start to the end of the last (calls may overlap), and
                # after that until the harness exited.
                first, last = min(begin for begin, _ in spans), max(end for _, end in spans)
                phases.append((first - started, last - first, took - (last - started)))
                if len(set(ids)) != tasks or not all(ids):
                    raise SystemExit(f"the manifest holds {len(set(filter(None, ids)))} job ids, not {tasks}")
                if repeat < args.repeats - 1:
                    cancel(ids)
                    settle(ids)
            files = wait_for_exit_files(run_dir, tasks, args.timeout)
            last_end = max((p.stat().st_mtime for p in files), default=float("nan")) - started
            failed = sum(p.read_text().strip() != "0" for p in files)
        finally:
            cancel(ids)

        naive_times, naive_cpu = naive(tmp, tasks)

    print(f"\nours, one invocation (median of {args.repeats} run(s)): {statistics.median(walls):.3f} s to submit all "
          f"{tasks} (each: {', '.join(f'{w:.3f}' for w in walls)}), {statistics.median(calls):.0f} sbatch calls")
    print(f"  CPU: {statistics.median(cpus):.3f} s (the harness with its sbatch and git calls)")
    before, inside, after = (statistics.median(phase) for phase in zip(*phases, strict=True))
    print(f"  medians: {before:.3f} s before the first sbatch (Python start-up, imports, plan, rendering), "
          f"{inside:.3f} s from the first sbatch call to the end of the last, {after:.3f} s after (release, exit)")
    print(f"  last run: {len(files)}/{tasks} tasks ended ({failed} non-zero), the last {last_end:.1f} s after "
          f"the invocation started")
    print(f"naive, one sbatch per task: {sum(naive_times):.3f} s to submit {tasks} ({tasks} sbatch calls, "
          f"median {statistics.median(naive_times) * 1000:.1f} ms per call), CPU {naive_cpu:.3f} s")
    print(f"ours / naive submission time: {statistics.median(walls) / sum(naive_times):.2f}x")


if __name__ == "__main__":
    main()
