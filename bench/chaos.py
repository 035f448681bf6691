"""Exactly once under chaos: a soak of the harness killed at every step, then resumed until done.

    python bench/chaos.py [--backend local|slurm|both] [--tasks 200] [--out results/exactly_once/chaos.txt]

Not a test: it prints figures. Per backend it runs one round per fault step. A round launches a sweep of
`--tasks` tasks (4 variants x tasks/4 seeds, each task sleeping 0.2-1 s; about 10% of them fail their first
try; `--max-retries 1`) with BENCHMARK_FAULT set to that step, so the harness SIGKILLs itself mid-sweep,
then runs `benchmark resume RUN_DIR` until it says "nothing to resume"; the first resume is itself killed at
another step. On Slurm, one node's slurmd is stopped once mid-sweep (a third of the tasks started) and
started again a few seconds later, while the harness or a resume is waiting.

Every task appends `start KEY T`, `ok KEY T` and `end KEY T` to a markers file outside the run dir (KEY is
variant/seed), so the counts come from what the tasks did, not from what the harness recorded:
successes per task (exactly once / twice or more / never), runs of one task that overlapped in time,
runs started beyond the ones needed (at least once, not exactly once), resumes needed and wall time
(launch to "nothing to resume"). The final manifest's states are read with `benchmark status`.

Run dirs and markers stay under --work-dir for inspection; nothing of the harness is changed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "benchmark" / "benchmark.py"
TEMPLATE = REPO / "templates" / "trl.slurm_template"
LAB = Path(os.environ.get("SLURM_LAB_DIR", "/var/tmp/trl-benchmark-slurm"))
VARIANTS = ("alpha", "beta", "gamma", "delta")

# The launch's fault, one round each. N (the Nth time the harness passes the step) puts the kill mid-sweep:
# the local pool submits one job per wave and polls every 0.25 s; Slurm submits one array per variant per
# wave (retries come in later waves) and polls every --poll-interval.
LOCAL_FAULTS = ("planned", "intent:40", "submitted:90", "waiting:30", "retry:3")
SLURM_FAULTS = ("planned", "intent:1", "intent:3", "submitted:1", "submitted:3", "held:1", "held:3",
                "released:1", "released:3", "waiting:8", "retry:2")
# The first resume of each round is killed too, at one of these (chosen by the seeded RNG).
LOCAL_RESUME_FAULTS = ("intent:5", "submitted:5", "waiting:4", "retry:1")
SLURM_RESUME_FAULTS = ("intent:1", "submitted:1", "held:1", "released:1", "waiting:3", "retry:1")

# The task, POSIX sh: `sh task.sh WORK VARIANT --seed N`. Its sleep and whether its first try fails come
# from WORK/plan (chosen up front by a seeded RNG); the first try claims WORK/tried/VARIANT-SEED (mkdir is
# atomic) and exits 3.
TASK_SH = r"""#!/bin/sh
work=$1; variant=$2; seed=$4; key="$variant/$seed"; markers="$work/markers"
trap 'echo "end $key $(date +%s.%N)" >> "$markers"' EXIT
echo "start $key $(date +%s.%N)" >> "$markers"
set -- $(awk -v k="$key" '$1 == k {print $2, $3}' "$work/plan")
[ -n "$1" ] || { echo "no plan for $key" >&2; exit 9; }
sleep "$1"
if [ "$2" = 1 ] && mkdir "$work/tried/$variant-$seed" 2>/dev/null; then echo "first try of $key fails"; exit 3; fi
echo "ok $key $(date +%s.%N)" >> "$markers"
"""


@dataclass
class Call:
    """One launch or resume: what ran, how it ended."""

    what: str
    fault: str | None
    code: int | None  # None: it hung past the timeout and was killed
    seconds: float
    output: Path
    said_nothing_to_resume: bool = False
    traceback: bool = False


@dataclass
class Round:
    backend: str
    fault: str
    run_dir: Path
    work: Path
    tasks: list[str]
    flaky: int
    calls: list[Call] = field(default_factory=list)
    wall: float = 0.0
    done: bool = False
    slurmd: str = ""  # what happened to the slurmd stopped mid-sweep
    current: subprocess.Popen[bytes] | None = None  # the launch or resume running now
    current_what: str = ""
    current_fault: str | None = None
    status: str = ""
    # figures from the markers
    once: int = 0
    twice: int = 0
    never: list[str] = field(default_factory=list)
    more: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    unended: int = 0
    started: int = 0

    @property
    def resumes(self) -> int:
        return sum(c.what.startswith("resume") for c in self.calls)

    @property
    def problems(self) -> list[str]:
        found = []
        if self.never:
            found.append(f"never: {', '.join(self.never[:8])}")
        if self.more:
            found.append(f"twice or more: {', '.join(self.more[:8])}")
        if self.overlaps:
            found.append(f"overlapping runs: {', '.join(self.overlaps[:8])}")
        if not self.done:
            found.append("never said nothing to resume")
        for call in self.calls:
            if call.traceback:
                found.append(f"traceback in {call.what} ({call.output})")
            if call.code is None:
                found.append(f"{call.what} hung ({call.output})")
            elif call.code not in (0, 1, -signal.SIGKILL):
                found.append(f"{call.what} exited {call.code} ({call.output})")
        if self.status and not re.fullmatch(rf"\S+: {len(self.tasks)} COMPLETED", self.status.splitlines()[0]):
            found.append(f"final manifest: {self.status.splitlines()[0]}")
        return found


def harness_env(fault: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "WANDB_TAGS", "COLUMNS",
                                                             "BENCHMARK_FAULT")}
    env.setdefault("SLURM_CONF", str(LAB / "etc" / "slurm.conf"))
    if fault:
        env["BENCHMARK_FAULT"] = fault
    return env


def run_harness(rnd: Round, what: str, args: list[str], fault: str | None, timeout: float) -> Call:
    """Run the CLI once, its output to a file; a run past `timeout` is a hang: killed (by its pid), noted."""
    output = rnd.work / "calls" / f"{len(rnd.calls):02d}-{what}.out"
    output.parent.mkdir(exist_ok=True)
    began = time.monotonic()
    with open(output, "w") as out:
        out.write(f"$ {'BENCHMARK_FAULT=' + fault + ' ' if fault else ''}benchmark {shlex.join(args)}\n")
        out.flush()
        process = subprocess.Popen([sys.executable, str(ENTRY), *args], cwd=rnd.work, env=harness_env(fault),
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        rnd.current, rnd.current_what, rnd.current_fault = process, what, fault  # for the slurmd killer: who is alive
        try:
            code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            code = None
    text = output.read_text()
    call = Call(what, fault, code, time.monotonic() - began, output,
                said_nothing_to_resume="nothing to resume" in text, traceback="Traceback" in text)
    rnd.calls.append(call)
    return call


def write_task(work: Path, tasks: list[str], rng: random.Random) -> int:
    """The task script and its plan (sleep, flaky) per task; the number of tasks whose first try fails."""
    (work / "tried").mkdir(parents=True)
    (work / "task.sh").write_text(TASK_SH)
    flaky = 0
    lines = []
    for key in tasks:
        fails = rng.random() < 0.1
        flaky += fails
        lines.append(f"{key} {rng.uniform(0.2, 1.0):.2f} {int(fails)}")
    (work / "plan").write_text("\n".join(lines) + "\n")
    return flaky


def read_markers(rnd: Round) -> None:
    ok: Counter[str] = Counter()
    spans: dict[str, list[list[float]]] = defaultdict(list)
    path = rnd.work / "markers"
    for line in path.read_text().splitlines() if path.exists() else []:
        what, key, when = line.split()
        if what == "start":
            spans[key].append([float(when), float("inf")])
        elif what == "ok":
            ok[key] += 1
        elif open_ := [s for s in spans[key] if s[1] == float("inf")]:
            open_[0][1] = float(when)
    rnd.once = sum(ok[k] == 1 for k in rnd.tasks)
    rnd.twice = sum(ok[k] >= 2 for k in rnd.tasks)
    rnd.never = [k for k in rnd.tasks if ok[k] == 0]
    rnd.more = [f"{k} x{ok[k]}" for k in rnd.tasks if ok[k] >= 2]
    rnd.started = sum(len(s) for s in spans.values())
    rnd.unended = sum(s[1] == float("inf") for runs in spans.values() for s in runs)
    for key, runs in spans.items():
        runs.sort()
        for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
            if end > start:
                rnd.overlaps.append(key)


def stop_slurmd_midway(rnd: Round, node: str, after_starts: int, down_s: float, stop: threading.Event) -> None:
    """Once `after_starts` runs have started: stop NODE's slurmd, start it again `down_s` later."""
    markers = rnd.work / "markers"
    while not stop.is_set():
        started = markers.read_text().count("start ") if markers.exists() else 0
        current = rnd.current
        if started >= after_starts and current is not None and current.poll() is None:
            break
        time.sleep(0.1)
    else:
        rnd.slurmd = f"slurmd-{node} not stopped: the sweep ended before {after_starts} runs started"
        return
    who = f"{rnd.current_what} ({'BENCHMARK_FAULT=' + fault if (fault := rnd.current_fault) else 'no fault'})"
    began = time.monotonic()
    subprocess.run(["bash", str(REPO / "scripts" / "slurm-down.sh"), f"slurmd-{node}"], check=True)
    time.sleep(down_s)
    up = subprocess.run(["bash", str(REPO / "scripts" / "slurm-up.sh")], capture_output=True, text=True)
    rnd.slurmd = (f"slurmd-{node} stopped at {started} runs started, during {who}, "
                  f"back after {time.monotonic() - began:.1f}s (slurm-up.sh exit {up.returncode})")
    if up.returncode:
        rnd.slurmd += ": " + up.stderr.strip().replace("\n", " | ")[-400:]


def launch_args(backend: str, run_dir: Path, work: Path, seeds: int) -> list[str]:
    args = [arg for name in VARIANTS for arg in ("--command", f"{name}=sh {work}/task.sh {work} {name}")]
    args += ["--num-seeds", str(seeds), "--max-retries", "1", "--run-dir", str(run_dir)]
    if backend == "local":
        return [*args, "--workers", "8"]
    return [*args, "--slurm-template-path", str(TEMPLATE), "--slurm-total-cpus", "1", "--slurm-gpus-per-task", "0",
            "--workers", "16", "--wait", "--poll-interval", "0.5"]


def play_round(backend: str, fault: str, resume_fault: str, index: int, opts: argparse.Namespace,
               rng: random.Random) -> Round:
    work = opts.work_dir / f"{backend}-{index:02d}-{fault.replace(':', '-')}"
    seeds = -(-opts.tasks // len(VARIANTS))
    tasks = [f"{v}/{s}" for v in VARIANTS for s in range(1, seeds + 1)]
    rnd = Round(backend, fault, work / "run", work, tasks, 0)
    rnd.flaky = write_task(work, tasks, rng)
    stop = threading.Event()
    killer = None
    if backend == "slurm" and opts.slurmd_kill:
        node = ("node2", "node1")[index % 2]
        killer = threading.Thread(target=stop_slurmd_midway, args=(rnd, node, len(tasks) // 3, 4.0, stop))
        killer.start()
    began = time.monotonic()
    run_harness(rnd, "launch", launch_args(backend, rnd.run_dir, work, seeds), fault, opts.timeout)
    for attempt in range(1, opts.max_resumes + 1):
        call = run_harness(rnd, f"resume{attempt}", ["resume", str(rnd.run_dir)],
                           resume_fault if attempt == 1 else None, opts.timeout)
        if call.said_nothing_to_resume:
            rnd.done = True
            break
        if call.code == 2:  # the CLI refused (its words are in the call's output): another try would too
            break
    rnd.wall = time.monotonic() - began
    stop.set()
    if killer:
        killer.join()
    status = subprocess.run([sys.executable, str(ENTRY), "status", str(rnd.run_dir)], cwd=work,
                            env=harness_env(None), capture_output=True, text=True, timeout=opts.timeout)
    rnd.status = (status.stdout + status.stderr).strip()
    read_markers(rnd)
    return rnd


def round_line(rnd: Round) -> str:
    def said(c: Call) -> str:
        missed = " (fault not reached)" if c.fault and c.code is not None and c.code != -signal.SIGKILL else ""
        return f"{c.what}{'[' + c.fault + ']' if c.fault else ''}={'hang' if c.code is None else c.code}{missed}"

    calls = " ".join(said(c) for c in rnd.calls)
    return (f"  {rnd.fault:<13} once {rnd.once:>3}  twice+ {rnd.twice}  never {len(rnd.never)}  "
            f"overlaps {len(rnd.overlaps)}  runs {rnd.started} (needed {len(rnd.tasks) + rnd.flaky}, "
            f"unended {rnd.unended})  resumes {rnd.resumes}  {rnd.wall:6.1f}s  [{calls}]")


def report(backend: str, rounds: list[Round]) -> list[str]:
    tasks = sum(len(r.tasks) for r in rounds)
    lines = [f"== {backend}: {len(rounds)} rounds x {len(rounds[0].tasks)} tasks "
             f"({len(VARIANTS)} variants x {len(rounds[0].tasks) // len(VARIANTS)} seeds), "
             f"{sum(r.flaky for r in rounds)} first tries failing on purpose, --max-retries 1",
             "  fault at     per round: successes per task, overlapping runs, runs started, resumes, wall, calls"]
    lines += [round_line(r) for r in rounds]
    for r in rounds:
        if r.slurmd:
            lines.append(f"  {r.fault:<13} {r.slurmd}")
    extra = sum(r.started - len(r.tasks) - r.flaky for r in rounds)
    lines += [
        f"  tasks succeeded exactly once: {sum(r.once for r in rounds)}/{tasks}, twice or more: "
        f"{sum(r.twice for r in rounds)}, never: {sum(len(r.never) for r in rounds)}",
        f"  runs of one task overlapping in time: {sum(len(r.overlaps) for r in rounds)}; runs started beyond "
        f"the ones needed: {extra}; runs with no end marker: {sum(r.unended for r in rounds)}",
        f"  resumes: {sum(r.resumes for r in rounds)} in all (per round {min(r.resumes for r in rounds)}-"
        f"{max(r.resumes for r in rounds)}, each round's last one said 'nothing to resume')",
        f"  wall time to done: {sum(r.wall for r in rounds):.1f}s in all, per round "
        f"{min(r.wall for r in rounds):.1f}-{max(r.wall for r in rounds):.1f}s",
        "  final manifests (benchmark status RUN_DIR, first line):",
    ]
    lines += [f"    {r.status.splitlines()[0] if r.status else '(no status)'}" for r in rounds]
    problems = [f"{r.fault}: {p} (run dir {r.run_dir})" for r in rounds for p in r.problems]
    if problems:
        lines.append(f"  VERDICT {backend}: FAIL, {len(problems)} problem(s):")
        lines += [f"    {p}" for p in problems]
        for r in rounds:
            if r.problems and r.status:
                lines.append(f"  benchmark status {r.run_dir} (round {r.fault}):")
                lines += [f"    {line}" for line in r.status.splitlines()[:40]]
    else:
        lines.append(f"  VERDICT {backend}: PASS: every task succeeded exactly once, no overlapping runs, "
                     f"every round done with no traceback or hang, every manifest all COMPLETED")
    return lines


def verdict(played: dict[str, list[Round]]) -> str:
    """One line over every backend."""
    failed = {b: sum(len(r.problems) for r in rounds) for b, rounds in played.items()}
    figures = ", ".join(f"{b} {sum(r.once for r in rs)}/{sum(len(r.tasks) for r in rs)} exactly once "
                        f"({sum(r.twice for r in rs)} twice+, {sum(len(r.never) for r in rs)} never, "
                        f"{sum(len(r.overlaps) for r in rs)} overlapping, {len(rs)} kills of the launch, "
                        f"{sum(r.resumes for r in rs)} resumes)" for b, rs in played.items())
    if not any(failed.values()):
        return f"verdict: PASS: {figures}; every round resumed to done, no traceback, no hang"
    where = ", ".join(f"{b}: {n} problem(s)" for b, n in failed.items() if n)
    return f"verdict: FAIL ({where}, listed above): {figures}"


def machine() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "benchmark"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return (f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, machine {os.uname().nodename} "
            f"({os.cpu_count()} CPUs), commit {commit.stdout.strip()}"
            f"{' (benchmark/ has uncommitted changes)' if dirty else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("local", "slurm", "both"), default="both")
    parser.add_argument("--tasks", type=int, default=200, help="tasks per round (rounded up to 4 variants)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "exactly_once" / "chaos.txt")
    parser.add_argument("--faults", nargs="*", help="launch faults to play (default: every step, per backend)")
    parser.add_argument("--seed", type=int, default=2024, help="of the RNG choosing sleeps, flaky tasks, faults")
    parser.add_argument("--work-dir", type=Path, help="where run dirs and markers stay (default /var/tmp/...)")
    parser.add_argument("--max-resumes", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a launch or resume is a hang")
    parser.add_argument("--no-slurmd-kill", dest="slurmd_kill", action="store_false")
    opts = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts.work_dir = (opts.work_dir or Path("/var/tmp/trl-chaos") / stamp).resolve()
    rng = random.Random(opts.seed)
    backends = ["local", "slurm"] if opts.backend == "both" else [opts.backend]
    header = [f"# bench/chaos.py: exactly once under SIGKILL at every step, {machine()}",
              f"$ python bench/chaos.py {shlex.join(sys.argv[1:])}", f"work dir (run dirs, markers): {opts.work_dir}"]
    print("\n".join(header), flush=True)
    if "slurm" in backends:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm-up.sh")], check=True, stdout=subprocess.DEVNULL)
    lines = list(header)
    played: dict[str, list[Round]] = {}
    for backend in backends:
        faults = opts.faults or (LOCAL_FAULTS if backend == "local" else SLURM_FAULTS)
        resume_faults = LOCAL_RESUME_FAULTS if backend == "local" else SLURM_RESUME_FAULTS
        rounds = played[backend] = []
        for index, fault in enumerate(faults):
            rnd = play_round(backend, fault, rng.choice(resume_faults), index, opts, rng)
            print(round_line(rnd), flush=True)
            rounds.append(rnd)
        section = report(backend, rounds)
        print("\n".join(section), flush=True)
        lines += section
    lines.append(verdict(played))
    print(lines[-1])
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text("\n".join(lines) + "\n")
    return 0 if lines[-1].startswith("verdict: PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
