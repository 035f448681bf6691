"""`--ref`: one sweep runs the same command at two git commits, then `benchmark compare` judges them: the
regression check of a pull request, from a fresh repository."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from cli import clean_env, records, run_cli

# The workload: logs a "reward" that is the package's constant plus a little per seed, through real wandb.
TRAIN = textwrap.dedent(
    """
    import sys, wandb
    from pkg.const import VALUE
    seed = int(sys.argv[sys.argv.index("--seed") + 1])
    run = wandb.init(mode="offline", config={"seed": seed})
    for step in range(3):
        run.log({"env/reward_mean": VALUE + 0.01 * seed})
    run.finish()
    print("value", VALUE)
    """
)


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    return subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def repo_with_two_commits(repo: Path) -> None:
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "train.py").write_text(TRAIN)
    (repo / "pkg" / "const.py").write_text("VALUE = 1.0\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    git(repo, "tag", "v1")
    (repo / "pkg" / "const.py").write_text("VALUE = 2.0\n")
    git(repo, "commit", "-qam", "the change under test")


def test_two_refs_run_their_own_code_and_compare_judges_them(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo_with_two_commits(repo)
    (repo / "pkg" / "const.py").write_text("VALUE = 99.0\n")  # uncommitted: neither ref runs it
    env = clean_env(WANDB_SILENT="true")
    result = run_cli("--ref", "v1", "--ref", "HEAD", "--command", "python -m pkg.train", "--num-seeds", "3",
                     "--workers", "2", "--run-dir", "r", cwd=repo, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    head = git(repo, "describe", "--tags").strip()  # v1-1-g<hash>
    jobs = records(repo / "r")
    assert {job["variant"] for job in jobs.values()} == {"v1", head}
    for job in jobs.values():
        expected = "1.0" if job["variant"] == "v1" else "2.0"
        assert f"value {expected}" in (repo / "r" / job["log"]).read_text()
    assert (repo / "r" / "refs" / "v1" / "pkg" / "const.py").read_text() == "VALUE = 1.0\n"

    # The regression check: the refs named as at launch.
    out = tmp_path / "verdict"
    compared = run_cli("compare", "--run-dir", "r", "--baseline", "v1", "--candidate", "HEAD", "--metric",
                       "env/reward_mean", "--output-dir", str(out), "--fail-on", "worse", cwd=repo, env=env)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    (reward,) = json.loads((out / "compare.json").read_text())["metrics"]
    assert reward["verdict"] == "better" and reward["delta"] == pytest.approx(1.0)
    assert reward["n_baseline"] == reward["n_candidate"] == 3


def test_an_unknown_ref_is_refused_before_anything_runs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo_with_two_commits(repo)
    result = run_cli("--ref", "no-such-branch", "--command", "true", "--workers", "1", "--run-dir", "r", cwd=repo)
    assert result.returncode == 2 and "--ref no-such-branch: no such git commit" in result.stderr
    assert not (repo / "r").exists()
