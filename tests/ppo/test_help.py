"""`--help` answers without loading the trainer, ends with examples that parse, and ends quietly in `| head`;
each step's line says how long the run has taken and how long it has left."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli import head_one

import trl_ppo
from trl_ppo import config, core, ppo
from trl_ppo.config import EXAMPLES, WORKLOAD_PACKAGES, parse

ROOT = Path(__file__).parents[2]
SCRIPTS = [["-m", "trl_ppo.ppo"], ["examples/scripts/ppo.py"]]


def test_help_ends_with_examples_and_imports_no_torch() -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "trl_ppo.ppo", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(EXAMPLES.format(prog="python -m trl_ppo.ppo"))
    # -X importtime writes one `import time: self | cumulative | module` line per module imported.
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()}
    assert "tyro" in imported and not imported & set(WORKLOAD_PACKAGES)


@pytest.mark.parametrize("script", SCRIPTS, ids=" ".join)
def test_help_into_a_closed_pipe_exits_quietly(script: list[str]) -> None:
    """As `--help | head -1`: the reader takes one line and closes the pipe while the help is still coming."""
    line, code, stderr = head_one([sys.executable, *script, "--help"], ROOT)
    assert line.startswith("usage:")
    assert code == 0, stderr
    assert stderr == ""


def test_help_examples_parse() -> None:
    commands = EXAMPLES.format(prog="PROG").replace("\\\n", " ").splitlines()
    runs = [shlex.split(line)[1:] for line in commands if line.strip().startswith("PROG")]
    assert len(runs) == 3
    assert [parse(flags).task for flags in runs] == ["sentiment", "sentiment", "control"]


def test_the_settings_import_from_where_they_always_did() -> None:
    assert trl_ppo.PPOConfig is ppo.PPOConfig is config.PPOConfig
    assert ppo.parse is config.parse and ppo.Args is config.Args and ppo.ConfigError is config.ConfigError
    assert config.KLPenalty == core.KLPenalty  # config spells it out, as it cannot import core


def test_durations_read_short() -> None:
    assert [ppo.duration(s) for s in (0.4, 45, 192, 3599.6, 7500)] == ["0s", "45s", "3m12s", "1h00m", "2h05m"]


def test_each_step_line_shows_elapsed_time_and_eta(run_ppo, capsys: pytest.CaptureFixture[str]) -> None:
    run_ppo("--ppo_config.batch_size", "8", "--ppo_config.mini_batch_size", "8", "--ppo_config.ppo_epochs", "1",
            "--ppo_config.steps", "16", "--max_new_tokens", "4")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    duration = r"(\d+s|\d+m\d\ds|\d+h\d\dm)"
    assert [re.fullmatch(rf"step (\d)/2: .*, {duration} elapsed, eta {duration}", line)[1] for line in lines] == [
        "1", "2"]
    assert lines[-1].endswith("eta 0s")
