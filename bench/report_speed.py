"""How fast the report reads and draws a sweep, beside wandb's own reader, measured in one run.

    python bench/report_speed.py [--shape 40x10000 --shape 400x1000] [--runs-dir DIR] [--repeats 3] [--leet]

For each --shape RUNSxSTEPS (default 40x10000), writes RUNS offline runs of STEPS steps (4 variants, TRL
metric names, 10 metrics a step) with the real wandb, two writer processes at a time; with --runs-dir they
are kept in DIR/STEPS-steps/ and reused by the next call (a shape with fewer runs of the same steps reuses
the first of them). Then, as the median of --repeats:
  - read: every run's `.wandb` file decoded into histories (`benchmark.report.offline.read_runs`), and
  - report: read + results table + verdicts + PNG and SVG + summary md/csv + the interactive page
    (`benchmark.report.main`), with the size of the page's index.html,
  - the same report as a user's fresh `python -m benchmark.report` process, imports included,
and with --leet, once, beside them, `wandb leet inspect --json` over the same files (two at a time, as many
processes as ours use) with its JSON lines parsed: what reading these files costs without our reader (minutes).
Each is given in wall seconds and in CPU seconds (this process and its children): the CPU figure
barely changes when other work shares the machine, the wall figure does.
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
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmark.report import main as report_main  # noqa: E402
from benchmark.report import offline  # noqa: E402
from benchmark.report.runs import Found  # noqa: E402

VARIANTS = ("sentiment_tuning", "sentiment_tuning_step_grad_accu", "sentiment_tuning_gpt2xl", "sentiment_tuning_peft")
METRICS = (
    "env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "objective/entropy",
    "ppo/loss/total", "ppo/loss/policy", "ppo/loss/value", "ppo/policy/clipfrac", "ppo/learning_rate",
)  # fmt: skip
WANDB_CLI = str(Path(sys.executable).parent / "wandb")


def write_runs(jobs: list[tuple[str, int]], steps: int, wandb_dir: str) -> None:
    """One writer process: its runs one after the other, through the real wandb."""
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=wandb_dir, WANDB_SILENT="true")
    import wandb

    for variant, seed in jobs:
        config = {"trl_ppo_trainer_config": {"exp_name": variant, "seed": seed, "batch_size": 128}}
        run = wandb.init(project="report-speed", name=f"{variant}-s{seed}", config=config)
        for step in range(steps):
            run.log({m: math.sin(step / 500 + i + seed) + step / steps for i, m in enumerate(METRICS)})
        run.finish()
    wandb.teardown()


def ensure_runs(runs_dir: Path, runs: int, steps: int) -> list[Path]:
    files = offline.find_run_files(runs_dir)
    if len(files) >= runs:
        return files[:runs]
    jobs = [(VARIANTS[i % len(VARIANTS)], i // len(VARIANTS)) for i in range(len(files), runs)]
    print(f"writing {len(jobs)} runs x {steps} steps x {len(METRICS)} metrics with wandb ...", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(write_runs, [jobs[0::2], jobs[1::2]], [steps] * 2, [str(runs_dir)] * 2))
    print(f"  written in {time.perf_counter() - start:.0f} s", flush=True)
    return offline.find_run_files(runs_dir)[:runs]


def shape(text: str) -> tuple[int, int]:
    """RUNSxSTEPS, e.g. 40x10000."""
    runs, _, steps = text.lower().partition("x")
    try:
        return int(runs), int(steps)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give RUNSxSTEPS, e.g. 40x10000") from None


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the reader's workers, wandb's processes):
    unlike wall time, it hardly moves when other work shares the machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(action, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `action`."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), cpu_seconds()
        action()
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def leet_read(files: list[Path], steps: int) -> None:
    """Dump every file with wandb's reader and parse its lines."""

    def dump(path: Path) -> int:
        out = subprocess.run([WANDB_CLI, "leet", "inspect", "--json", str(path)], capture_output=True, check=True)
        return sum(json.loads(line).get("type") == "history" for line in out.stdout.splitlines() if line)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        assert sum(pool.map(dump, files)) == len(files) * steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=shape, action="append", help="RUNSxSTEPS, repeatable; default 40x10000")
    parser.add_argument("--runs-dir", type=Path, help="keep the written runs here and reuse them")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--leet", action=argparse.BooleanOptionalAction, default=False,
                        help="also time wandb leet inspect (minutes)")
    args = parser.parse_args()
    for runs, steps in args.shape or [(40, 10_000)]:
        measure(runs, steps, args.runs_dir, args.repeats, args.leet)


def measure(runs: int, steps: int, runs_dir: Path | None, repeats: int, leet: bool) -> None:
    """The table of one shape: `runs` runs of `steps` steps."""
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = (runs_dir or Path(tmp)) / f"{steps}-steps"
        runs_dir.mkdir(parents=True, exist_ok=True)
        files = ensure_runs(runs_dir, runs, steps)
        # Only the chosen files, whatever else the kept folder holds.
        subset = Path(tmp) / "subset"
        for path in files:
            (subset / path.parent.name).mkdir(parents=True)
            (subset / path.parent.name / path.name).symlink_to(path)
        size = sum(p.stat().st_size for p in files) / 2**20
        print(f"\n{len(files)} runs x {steps} steps, {size:.0f} MiB of .wandb files, {os.cpu_count()} cores",
              flush=True)

        def read() -> None:
            found = Found()
            offline.read_runs(offline.find_run_files(subset), found)
            assert len(found.runs) == len(files) and all(len(r.history) == steps for r in found.runs)

        def report() -> None:
            argv = ["--wandb-dir", str(subset), "--output-dir", str(Path(tmp) / "out"), "--name", "speed"]
            with open(os.devnull, "w") as devnull:
                stdout, sys.stdout = sys.stdout, devnull
                try:
                    assert report_main(argv) == 0
                finally:
                    sys.stdout = stdout

        print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
        print("                                    wall s   CPU s", flush=True)
        read_s, read_cpu = timed(read, repeats)
        print(f"read (ours)                       {read_s:8.2f} {read_cpu:7.2f}", flush=True)
        report_s, report_cpu = timed(report, repeats)
        page = (Path(tmp) / "out" / "index.html").stat().st_size / 2**20
        print(f"read + aggregate + plot + tables  {report_s:8.2f} {report_cpu:7.2f}  (index.html {page:.1f} MiB)",
              flush=True)

        def command() -> None:
            argv = ["--wandb-dir", str(subset), "--output-dir", str(Path(tmp) / "cli"), "--name", "speed"]
            subprocess.run([sys.executable, "-m", "benchmark.report", *argv], check=True, capture_output=True)

        cli_s, cli_cpu = timed(command, repeats)
        print(f"the same as a fresh command       {cli_s:8.2f} {cli_cpu:7.2f}  (with Python and library imports)",
              flush=True)
        if leet:
            leet_s, leet_cpu = timed(lambda: leet_read(files, steps), 1)
            print(f"wandb leet inspect --json + parse {leet_s:8.2f} {leet_cpu:7.2f}  ({leet_s / read_s:.0f}x our read)",
                  flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
