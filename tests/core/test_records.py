"""Records and inputs: secrets never written, bad input refused, corrupt manifests named, auto tags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli import REPO, clean_env, records, run_cli

SECRET = "s3cr3t-value-9f8e7d"
INLINE = "inline-token-1a2b3c"


def harness_files(run_dir: Path) -> str:
    """Everything the harness wrote into the run dir: all but the jobs' own logs and exit codes."""
    files = [p for p in run_dir.rglob("*") if p.is_file() and "logs" not in p.relative_to(run_dir).parts]
    assert run_dir / "manifest.jsonl" in files
    return "\n".join(p.read_text(errors="replace") for p in files)


def test_secrets_are_never_written_but_reach_the_job(cwd: Path) -> None:
    env = clean_env(WANDB_API_KEY=SECRET, SOME_PASSWORD_FILE="x" * 8)
    command = (
        f"MY_TOKEN={INLINE} sh -c 'echo token length ${{#MY_TOKEN}}; "
        "test \"$WANDB_API_KEY\" = \"$EXPECTED\" && echo key ok' job"
    )
    env["EXPECTED"] = SECRET  # lets the job check the key without printing it; not a secret name
    result = run_cli("--command", f"tok={command}", "--command", f"echo=echo {SECRET}",
                     "--command", f"pw=echo {'x' * 8}", "--num-seeds", "1",
                     "--workers", "2", "--run-dir", "r", cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    written = harness_files(cwd / "r") + result.stdout + result.stderr
    assert SECRET not in written and INLINE not in written and "x" * 8 not in written
    assert (cwd / "r" / "logs" / "pw" / "seed-1.log").read_text() == f"{'x' * 8} --seed 1\n"
    # The stored command references the variable; the job still gets the value.
    assert records(cwd / "r")["tok/1"]["command"].startswith('MY_TOKEN="$MY_TOKEN" sh -c')
    log = (cwd / "r" / "logs" / "tok" / "seed-1.log").read_text()
    assert f"token length {len(INLINE)}" in log and "key ok" in log
    # A secret's value written out in a command becomes a reference too, and the job still sees it.
    assert records(cwd / "r")["echo/1"]["command"] == 'echo "$WANDB_API_KEY" --seed 1'
    assert (cwd / "r" / "logs" / "echo" / "seed-1.log").read_text() == f"{SECRET} --seed 1\n"
    assert "***" in (cwd / "r" / "manifest.jsonl").read_text()  # the argv in the plan is masked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus-flag"], "Unrecognized options"),
        (["--workers", "2"], "no --command given"),
        (["--command", "  ", "--workers", "2"], "--command is empty"),
        (["--command", "true", "--num-seeds", "0", "--workers", "1"], "--num-seeds must be at least 1"),
        (["--command", "true", "--workers", "-1"], "--workers must not be negative"),
        (["--command", "true", "--start-seed", "-3", "--workers", "1"], "--start-seed must not be negative"),
        (["--command", "python 'unbalanced", "--workers", "1"], "cannot parse --command"),
        (["status", "nowhere"], "holds no manifest.jsonl"),
        (["resume", "nowhere"], "holds no manifest.jsonl"),
        (["cancel"], "Missing"),
    ],
)
def test_bad_input_exits_2_and_starts_nothing(cwd: Path, args: list[str], message: str) -> None:
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not (cwd / "runs").exists()


def test_corrupt_manifest_names_file_and_line(cwd: Path) -> None:
    assert run_cli("--command", "true", "--num-seeds", "2", "--workers", "1", "--run-dir", "r", cwd=cwd).returncode == 0
    path = cwd / "r" / "manifest.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    result = run_cli("status", "r", cwd=cwd)
    assert result.returncode == 2
    assert f"{Path('r') / 'manifest.jsonl'}, line 3:" in result.stderr and "Expecting property name" in result.stderr


def test_a_torn_last_line_is_ignored(cwd: Path) -> None:
    assert run_cli("--command", "true", "--num-seeds", "2", "--workers", "1", "--run-dir", "r", cwd=cwd).returncode == 0
    path = cwd / "r" / "manifest.jsonl"
    with open(path, "a") as f:
        f.write('{"job": {"id": "true/1", "sta')  # power cut mid-append
    result = run_cli("status", "r", cwd=cwd)
    assert result.returncode == 0 and "2 COMPLETED" in result.stdout


def test_existing_run_dir_is_not_overwritten(cwd: Path) -> None:
    assert run_cli("--command", "echo first", "--num-seeds", "1", "--workers", "1", "--run-dir", "r",
                   cwd=cwd).returncode == 0
    before = {p: p.read_bytes() for p in (cwd / "r").rglob("*") if p.is_file()}
    result = run_cli("--command", "echo second", "--num-seeds", "2", "--workers", "1", "--run-dir", "r", cwd=cwd)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert {p: p.read_bytes() for p in (cwd / "r").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "entry",
    [
        [sys.executable, str(REPO / "benchmark" / "benchmark.py")],
        [sys.executable, "-m", "benchmark"],
        [str(Path(sys.executable).parent / "benchmark")],
    ],
)
def test_every_entry_point_runs_the_same_cli(cwd: Path, entry: list[str]) -> None:
    result = subprocess.run(
        [*entry, "--command", "echo hi", "--num-seeds", "2", "--workers", "1", "--run-dir", "r"],
        cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [j["state"] for j in records(cwd / "r").values()] == ["COMPLETED", "COMPLETED"]
    assert (cwd / "r" / "logs" / "echo-hi" / "seed-2.log").read_text() == "hi --seed 2\n"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def tags_seen(cwd: Path, *args: str, **env: str) -> str:
    result = run_cli("--command", "sh -c 'echo $WANDB_TAGS' t", "--num-seeds", "1", "--workers", "1",
                     "--run-dir", "r", *args, cwd=cwd, env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    text = (cwd / "r" / "logs" / "sh-c-echo-WANDB_TAGS-t" / "seed-1.log").read_text().strip()
    subprocess.run(["rm", "-rf", str(cwd / "r")], check=True)
    return text


def test_auto_tag_uses_git_and_local_pr_numbers(cwd: Path) -> None:
    git(cwd, "init", "-q")
    git(cwd, "commit", "-q", "--allow-empty", "-m", "one")
    git(cwd, "commit", "-q", "--allow-empty", "-m", "two")
    short = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True).stdout
    assert tags_seen(cwd) == f"no-tag-2-g{short.strip()}"
    git(cwd, "tag", "v1.2")
    assert tags_seen(cwd, "--pr", "42", WANDB_TAGS="mine") == "mine,v1.2,pr-42"
    assert tags_seen(cwd, GITHUB_REF="refs/pull/7/merge") == "v1.2,pr-7"
    assert tags_seen(cwd, "--no-auto-tag", WANDB_TAGS="mine") == "mine"
    assert records_plan_tags(cwd) == ["v1.2"]


def records_plan_tags(cwd: Path) -> list[str]:
    import json

    run_cli("--command", "true", "--num-seeds", "1", "--workers", "1", "--run-dir", "p", cwd=cwd)
    return json.loads((cwd / "p" / "manifest.jsonl").read_text().splitlines()[0])["plan"]["wandb_tags"]
