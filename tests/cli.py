"""Run the real CLI in a subprocess, as a user would, and read what it recorded."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "benchmark" / "benchmark.py"


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, str(ENTRY), *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "WANDB_TAGS", "COLUMNS")}
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        cli_argv(*args), cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )


def records(run_dir: Path) -> dict[str, dict]:
    """The last snapshot of each job in a manifest, read as plain JSON (not through our loader)."""
    jobs: dict[str, dict] = {}
    for line in (run_dir / "manifest.jsonl").read_text().splitlines()[1:]:
        if job := json.loads(line).get("job"):
            jobs[job["id"]] = job
    return jobs


def followup(run_dir: Path) -> dict | None:
    """The last snapshot of the follow-up job (`--then`), if the manifest has one."""
    lines = [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()[1:]]
    return next((entry["followup"] for entry in reversed(lines) if "followup" in entry), None)


def wait_for(condition: Callable[[], object], timeout: float = 60, what: str = "condition") -> None:
    """Poll until `condition()` is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_for_logged(logs: list[Path], text: str, what: str) -> None:
    """Poll until every log exists and holds `text`: a job's own output, not a scheduler's state."""
    wait_for(lambda: all(log.exists() and text in log.read_text() for log in logs), what=what)


def head_one(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[str, int, str]:
    """Run `argv` as `argv | head -1` would: the reader takes one line and closes the pipe while the output is still
    coming (a pipe smaller than a --help, so the writer meets the closed end). The line, exit code and stderr."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    process = subprocess.Popen(argv, cwd=cwd, env=env or clean_env(), stdout=write_end, stderr=subprocess.PIPE,
                               text=True)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        line = reader.readline()
    code = process.wait(timeout=120)
    assert process.stderr is not None
    return line, code, process.stderr.read()
