"""How long `benchmark status` takes on a big run, beside the old status (a rich table of every job).

    python bench/status_speed.py [--jobs 10000] [--variants 4] [--repeats 5] [--local] [--keep DIR]

Writes a Slurm run dir of --jobs tasks that have all ended (COMPLETED, one in a hundred FAILED with a
shared message), so that no scheduler is asked anything, and with --local a local-pool one too. Then
times, as whole processes started from here (Python's start-up included, output read through a pipe):
  - `benchmark status RUN_DIR` and `benchmark status RUN_DIR --all`, and
  - the old status, the baseline: the same imports and manifest load, then every job drawn in a rich
    Table and printed, as `benchmark status` did before it listed only the jobs not COMPLETED.
Each as min and median wall seconds of --repeats runs, with the median CPU seconds (user + system)
and the baseline's median over the new one. Then where one status spends its time, step by step.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENTRY = REPO / "benchmark" / "benchmark.py"

from benchmark.manifest import COMPLETED, JobRecord, Manifest, Record  # noqa: E402
from benchmark.plan import LocalSettings, Plan, SlurmSettings, Variant  # noqa: E402

COLUMNS = ("variant", "seed", "state", "exit", "duration", "tries", "job id", "node", "log", "W&B run")


def write_run(run_dir: Path, jobs: int, variants: int, slurm: bool) -> None:
    """A run dir whose jobs have all ended: nothing for a backend to ask its scheduler."""
    names = [f"sentiment_tuning_{i}" for i in range(variants)]
    plan_variants = tuple(Variant(name, f"python -m trl_ppo.ppo --exp_name {name}") for name in names)
    seeds = tuple(range(1, jobs // variants + 1))
    backend = SlurmSettings(template="templates/trl.slurm_template") if slurm else LocalSettings(workers=8)
    plan = Plan(variants=plan_variants, seeds=seeds, backend=backend)
    now = time.time()
    records = []
    for v in plan_variants:
        for seed in seeds:
            i = len(records)
            failed = i % 100 == 7
            array, task = 4_100_000 + i // 1000, i % 1000
            records.append(JobRecord(
                id=f"{v.name}/{seed}", variant=v.name, seed=seed, command=f"{v.command} --seed {seed}",
                log=f"logs/{v.name}/{array}_{task}.out" if slurm else f"logs/{v.name}/seed-{seed}.log",
                state="FAILED" if failed else COMPLETED, exit_code=1 if failed else 0,
                scheduler_id=f"{array}_{task}" if slurm else None, node=f"gpu-{i % 64:03d}" if slurm else None,
                start=now - 3600 - i, end=now - 60, wandb_id=f"r{i:07d}", wandb_name=f"{v.name}__{seed}__{int(now)}",
                message="the node failed (NODE_FAIL)" if failed else None,
            ))  # fmt: skip
    Manifest.create(run_dir, plan, records)


def old_status_table(records: list[Record], run_dir: Path, title: str):
    """`benchmark.view.status_table` as it was: every job a row of a rich Table."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column)
    for r in records:
        job = r if isinstance(r, JobRecord) else None
        wandb = " ".join(x for x in (job.wandb_name, f"({job.wandb_id})" if job.wandb_id else None) if x) if job else ""
        pid = getattr(r, "pid", None)
        table.add_row(
            job.variant if job else "(--then)",
            str(job.seed) if job else "",
            Text(r.state, style="green" if r.state == COMPLETED else "red"),
            "" if r.exit_code is None else str(r.exit_code),
            duration(r.duration),
            str(len(job.tries) + 1) if job else "",
            f"pid {pid}" if pid else (r.scheduler_id or ""),
            r.node or "",
            str(run_dir / r.log) if r.log else "",
            wandb,
        )
    return table


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def old_status(run_dir: Path) -> None:
    """The old `benchmark status RUN_DIR`, off a terminal (the backend's refresh aside: nothing to refresh)."""
    import benchmark.cli  # noqa: F401  # the same imports as a status process

    print_old_status(Manifest.load(run_dir).records(), run_dir, sys.stdout)


def print_old_status(records: list[Record], run_dir: Path, out) -> None:
    """The title, the table 320 columns wide (as off a terminal), then each job's message."""
    from rich.console import Console

    counts: dict[str, int] = {}
    for record in records:
        counts[record.state] = counts.get(record.state, 0) + 1
    title = f"{run_dir}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    console = Console(file=out, highlight=False, soft_wrap=True, width=320)
    console.print(old_status_table(records, run_dir, title), markup=False)
    for record in records:
        if record.message:
            print(f"{record.id}: {record.message}", file=out)


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def timed_process(argv: list[str], repeats: int) -> tuple[float, float, float, int]:
    """Min and median wall seconds, median CPU seconds, and the bytes printed, of `argv` run `repeats` times."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, wall = children_cpu(), time.perf_counter()
        result = subprocess.run(argv, capture_output=True, check=True)
        walls.append(time.perf_counter() - wall)
        cpus.append(children_cpu() - cpu)
    return min(walls), statistics.median(walls), statistics.median(cpus), len(result.stdout)


def timed_call(action, repeats: int) -> float:
    walls = []
    for _ in range(repeats):
        wall = time.perf_counter()
        action()
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls)


def measure(run_dir: Path, repeats: int) -> None:
    status = [sys.executable, str(ENTRY), "status", str(run_dir)]
    old = [sys.executable, __file__, "--old-status", str(run_dir)]
    figures = {
        "python -c pass (start-up alone)": timed_process([sys.executable, "-c", "pass"], repeats),
        "benchmark status": timed_process(status, repeats),
        "benchmark status --all": timed_process([*status, "--all"], repeats),
        "old status (rich table, every job)": timed_process(old, repeats),
    }
    print(f"  {'whole process':38} {'min s':>7} {'median s':>9} {'cpu s':>7} {'printed':>9}")
    for name, (best, median, cpu, size) in figures.items():
        print(f"  {name:38} {best:7.3f} {median:9.3f} {cpu:7.3f} {size / 1024:7.0f} KiB")
    baseline = figures["old status (rich table, every job)"][1]
    for name in ("benchmark status", "benchmark status --all"):
        print(f"  {name}: {baseline / figures[name][1]:.1f}x faster than the old status (medians)")

    from benchmark.view import status_table

    records = Manifest.load(run_dir).records()
    # The backend's refresh is left out: with every job ended it has nothing to ask (about a millisecond).
    steps = {
        "import benchmark.cli": lambda: subprocess.run([sys.executable, "-c", "import benchmark.cli"], cwd=REPO),
        "Manifest.load": lambda: Manifest.load(run_dir),
        "status_table": lambda: status_table(records, run_dir),
        "status_table, every job": lambda: status_table(records, run_dir, every_job=True),
        "old table (rich, every job)": lambda: print_old_status(records, run_dir, io.StringIO()),
    }
    print("  one step at a time, median seconds (the import in a fresh process, with its start-up):")
    for name, action in steps.items():
        print(f"    {name:28} {timed_call(action, min(repeats, 2) if 'old' in name else repeats):7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--local", action="store_true", help="time a local-pool run dir too")
    parser.add_argument("--keep", type=Path, help="write the run dirs here (and reuse them) instead of a temp dir")
    parser.add_argument("--old-status", type=Path, help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args()
    if args.old_status:
        return old_status(args.old_status)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        for backend in ("slurm", "local") if args.local else ("slurm",):
            run_dir = folder / f"{backend}-{args.jobs}"
            if not run_dir.exists():
                write_run(run_dir, args.jobs, args.variants, slurm=backend == "slurm")
            print(f"{backend} run dir, {args.jobs} jobs ended ({os.cpu_count()} cores, Python "
                  f"{sys.version.split()[0]}):", flush=True)
            measure(run_dir, args.repeats)


if __name__ == "__main__":
    main()
