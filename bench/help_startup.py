"""How long `--help` takes: `python -m trl_ppo.ppo` and `benchmark`, before and after issue 21, in one run.

    python bench/help_startup.py [--repeats 5] [--before e58a32c]

"before" is the code at commit --before, checked out in a temporary git worktree (removed at the end); "after"
is this working tree. Each side runs with its own folder as the working directory and on PYTHONPATH, so that
its own `trl_ppo` and `benchmark` load, not the installed (editable) ones; `benchmark --help` runs as
`python -m benchmark --help`, the console script's code. After one untimed warm-up round (bytecode caches,
page cache), the sides alternate for --repeats rounds, each round's first side in turn: before, after, after,
before, ... Printed: each side's median wall and CPU seconds, and before / after as the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"python -m trl_ppo.ppo --help": ["-m", "trl_ppo.ppo", "--help"],
            "benchmark --help": ["-m", "benchmark", "--help"]}
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # an installed package has caches


def timed(argv: list[str], root: Path) -> tuple[float, float]:
    """Wall seconds of the whole process, and its CPU seconds; fails loudly unless it exits 0."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *argv], cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**ENV, "PYTHONPATH": str(root)})
    err = process.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    took = time.perf_counter() - start
    if code := os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(argv)} in {root} failed ({code}):\n{err.decode()[-4000:]}")
    return took, usage.ru_utime + usage.ru_stime


def loads_from(root: Path) -> str:
    """Where `trl_ppo` comes from when run in `root`: a check that each side runs its own code."""
    done = subprocess.run([sys.executable, "-c", "import trl_ppo; print(trl_ppo.__file__)"], cwd=root,
                          env={**ENV, "PYTHONPATH": str(root)}, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default="e58a32c", help="the commit to compare the working tree with")
    args = parser.parse_args()

    worktree = Path(tempfile.mkdtemp(prefix="help_before_")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(worktree), args.before], cwd=REPO, check=True)
    try:
        sides = {"before": worktree, "after": REPO}
        for side, root in sides.items():
            where = loads_from(root)
            assert where.startswith(str(root)), f"{side}: trl_ppo loads from {where}, not from {root}"
        print(f"before: {args.before} ({worktree}); after: the working tree ({REPO}); {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.1f}, median of {args.repeats} rounds\n")
        print(f"  {'':30}{'before':>16}{'after':>16}{'before / after':>16}")
        for label, argv in COMMANDS.items():
            runs: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
            for root in sides.values():
                timed(argv, root)  # warm-up
            order = list(sides)
            for _ in range(args.repeats):
                for side in order:
                    runs[side].append(timed(argv, sides[side]))
                order.reverse()
            wall = {side: statistics.median(w for w, _ in series) for side, series in runs.items()}
            cpu = {side: statistics.median(c for _, c in series) for side, series in runs.items()}
            print(f"  {label:30}{wall['before']:>12.2f} s{wall['after']:>14.2f} s"
                  f"{wall['before'] / wall['after']:>15.1f}x   wall")
            print(f"  {'':30}{cpu['before']:>12.2f} s{cpu['after']:>14.2f} s"
                  f"{cpu['before'] / cpu['after']:>15.1f}x   CPU")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=True)
        worktree.parent.rmdir()


if __name__ == "__main__":
    main()
