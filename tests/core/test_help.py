"""`--help` teaches: the subcommands, the flags in groups, examples that run; and `| head` ends quietly."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from cli import REPO, clean_env, cli_argv, head_one, run_cli

SUBCOMMANDS = ("status", "resume", "cancel", "report", "compare")


def examples(help_text: str) -> list[list[str]]:
    """The example command lines at the end of a --help, each as its words (continuation lines joined)."""
    block = help_text.split("\nexamples:\n", 1)[1]
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip().startswith("benchmark ")]
    return [shlex.split(line, comments=True) for line in lines]


def test_benchmark_help_lists_the_subcommands_and_groups_the_flags(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for sub in SUBCOMMANDS:
        assert re.search(rf"^  {sub}\b.+\S", result.stdout, re.MULTILINE), sub
    for group in ("options", "local-pool options", "slurm options", "submitit options", "W&B options"):
        assert f"─ {group} ─" in result.stdout, group
    # The seed's flags keep their names inside the groups.
    for flag in ("--slurm-template-path PATH", "--slurm-gpus-per-task INT", "--gpus IDS", "--pr N", "--workers INT"):
        assert flag in result.stdout, flag
    assert len(examples(result.stdout)) >= 2


@pytest.mark.parametrize("argv", [["--help"], *([sub, "--help"] for sub in SUBCOMMANDS)], ids=" ".join)
def test_each_help_ends_with_examples_and_says_each_thing_once(tmp_path: Path, argv: list[str]) -> None:
    result = run_cli(*argv, cwd=tmp_path, env=clean_env(COLUMNS="200"))
    assert result.returncode == 0, result.stderr
    found = examples(result.stdout)
    assert len(found) >= 2, result.stdout[-2000:]
    for words in found:
        assert words[0] == "benchmark"
        if len(argv) > 1:
            assert words[1] == argv[0]
    text = re.sub(r"[│\s]+", " ", result.stdout)
    assert "(repeatable) (repeatable)" not in text
    assert "{None}|" not in text
    assert not re.search(r"\(default: [^)]*\) \(default: None\)", text)
    assert "(default: None)" not in text


def test_the_launch_examples_plan_as_shown(tmp_path: Path) -> None:
    """Each example of `benchmark --help`, with --dry-run: the plan it would run, and nothing started."""
    for words in examples(run_cli("--help", cwd=tmp_path).stdout):
        result = run_cli(*words[1:], "--dry-run", cwd=tmp_path)
        assert result.returncode == 0, (words, result.stderr)
        command = words[words.index("--command") + 1].split("=", 1)[-1]
        assert command in result.stdout, result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["--help"], *([sub, "--help"] for sub in SUBCOMMANDS)], ids=" ".join)
def test_help_into_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    """`benchmark ... --help | head -1`: the reader leaves after one line; no BrokenPipeError traceback."""
    line, code, stderr = head_one(cli_argv(*argv), REPO)
    assert line.startswith("usage: benchmark")
    assert code == 0, stderr
    assert stderr == ""


def test_the_readme_quotes_the_start_of_benchmark_help(tmp_path: Path) -> None:
    quoted = (REPO / "README.md").read_text().split("`benchmark --help` starts with what it can do:\n\n", 1)[1]
    block = [line.removeprefix("    ") for line in quoted.split("\n\nthen ", 1)[0].splitlines()]
    assert run_cli("--help", cwd=tmp_path).stdout.splitlines()[: len(block)] == block
