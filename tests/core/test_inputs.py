"""What a launch accepts and refuses before anything runs: the plan's inputs, checked in plan.py."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from cli import REPO, run_cli

from benchmark.plan import LaunchRequest, PlanError, make_plan, seed_target, variant_folder
from benchmark.redact import Redactor

SECRET = "abcd1234secret"


def plan_json(redactor: Redactor | None = None, argv: tuple[str, ...] = (), **fields: object) -> tuple[str, dict]:
    plan, lifted = make_plan(LaunchRequest(**fields), list(argv), redactor or Redactor({}))  # type: ignore[arg-type]
    return json.dumps(plan.to_json()), lifted


def test_the_plan_imports_neither_the_cli_nor_the_templates() -> None:
    source = (REPO / "benchmark" / "plan.py").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"benchmark.cli", "benchmark.templates"}, imported
    # A Slurm plan settles its template path without jinja2 either.
    script = ("import sys; from benchmark.plan import LaunchRequest, make_plan; from benchmark.redact import Redactor; "
              "make_plan(LaunchRequest(command=('true',), backend='slurm'), [], Redactor({})); "
              "print([m for m in ('benchmark.cli', 'benchmark.templates', 'jinja2', 'tyro') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_launch_request_is_the_cli_flags_make_plan_reads_with_their_defaults() -> None:
    from benchmark.cli import LaunchArgs

    assert LaunchArgs().request() == LaunchRequest()
    # Every flag of every --help group, by name: only --dry-run and --run-dir are the CLI's alone.
    launch = LaunchArgs()
    groups = [launch, *(getattr(launch, f.name) for f in dataclasses.fields(launch) if dataclasses.is_dataclass(
        getattr(launch, f.name)))]
    flags = {f.name for group in groups for f in dataclasses.fields(group) if not dataclasses.is_dataclass(
        getattr(group, f.name))}
    assert flags - {"dry_run", "run_dir"} == {f.name for f in dataclasses.fields(LaunchRequest)}


@pytest.mark.parametrize(("name", "folder"), [
    ("ppo", "ppo"), ("a b", "a_b"), ("peft@v1.2+3", "peft_v1.2+3"), ("../../escaped", "___.._escaped"),
    (".", "_"), ("..", "__"), (".hidden", "_hidden"), ("x/../y", "x_.._y"), ("a\nb\tc", "a_b_c"), ("", "_"),
])
def test_a_variant_folder_is_one_plain_path_component(tmp_path: Path, name: str, folder: str) -> None:
    assert variant_folder(name) == folder
    assert (tmp_path / variant_folder(name)).resolve().parent == tmp_path.resolve()


def refused(cwd: Path, *args: str) -> str:
    """The CLI's error for a launch it must refuse, having written nothing."""
    for mode in ("--dry-run", "--run-dir=r"):
        result = run_cli(*args, "--workers", "1", mode, cwd=cwd)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith("error: ") and list(cwd.iterdir()) == []
    return result.stderr


def test_variants_whose_names_share_a_folder_are_refused(cwd: Path) -> None:
    error = refused(cwd, "--command", "python t.py --exp_name 'a b'", "--command", "python t.py --exp_name a_b")
    assert "'a b'" in error and "'a_b'" in error and "a_b" in error


@pytest.mark.parametrize("name", ["a\nb", "a\tb", "a\x1bb"])
def test_a_variant_name_with_a_control_character_is_refused(cwd: Path, name: str) -> None:
    assert repr(name) in refused(cwd, "--command", f"python t.py --exp_name '{name}'")


def test_a_variant_named_like_a_path_stays_inside_the_run_dir(cwd: Path) -> None:
    result = run_cli("--command", "echo hi --exp_name ../../escaped", "--num-seeds", "1", "--workers", "1",
                     "--run-dir", "deep/r", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in cwd.iterdir()] == ["deep"] and [p.name for p in (cwd / "deep").iterdir()] == ["r"]


@pytest.mark.parametrize(("command", "target"), [
    ("python t.py --lr 1", None),
    ("FOO=1 python t.py > log 2>&1", None),
    ("python t.py &> log", None),
    ("python t.py >| log <&0", None),
    ("echo 'a; b' \"c | d\" a\\;b", None),
    ("python t.py --tag $(git rev-parse HEAD | cut -c1-8) `date; true`", None),
    ("python t.py | tee log", "tee log"),
    ("cd sub && python t.py", "python t.py"),
    ("a; b || c", "c"),
    ("a & b", "b"),
    ("a |& b", "b"),
    ("a\nb", "b"),
])
def test_the_seed_flag_goes_to_the_last_simple_command(command: str, target: str | None) -> None:
    assert seed_target(command) == target


def test_notes_say_where_the_seed_flag_goes() -> None:
    plan, _ = make_plan(LaunchRequest(command=("t=python t.py | tee log", "u=python u.py"), start_seed=4),
                        [], Redactor({}))
    assert plan.notes() == ["note: t: `--seed 4` goes to the last command only: `tee log`"]
    quiet, _ = make_plan(LaunchRequest(command=("t=python t.py | tee log",), seed_flag=""), [], Redactor({}))
    assert quiet.notes() == []


@pytest.mark.parametrize("command", ["python t.py # a note", "python t.py\n# a note", "a | b #"])
def test_a_comment_that_would_swallow_the_seed_flag_is_refused(command: str) -> None:
    with pytest.raises(PlanError, match="wrapper script"):
        make_plan(LaunchRequest(command=(command,)), [], Redactor({}))
    make_plan(LaunchRequest(command=(command,), seed_flag=""), [], Redactor({}))  # no flag to swallow


@pytest.mark.parametrize("command", ["echo 'a # b'", 'echo "a # b"', "echo a#b", "echo a\\ #b", "echo ${#HOME}"])
def test_a_hash_that_is_no_comment_is_fine(command: str) -> None:
    make_plan(LaunchRequest(command=(command,)), [], Redactor({}))


@pytest.mark.parametrize("command", ["python t.py &", "python t.py;"])
def test_a_command_that_would_leave_the_seed_flag_on_its_own_is_refused(command: str) -> None:
    with pytest.raises(PlanError, match="on its own"):
        make_plan(LaunchRequest(command=(command,)), [], Redactor({}))


def test_the_comment_is_refused_through_the_cli(cwd: Path) -> None:
    assert "wrapper script" in refused(cwd, "--command", "python train.py # note")


def test_secrets_in_setup_lines_and_the_follow_up_are_stored_as_references() -> None:
    argv = ("--slurm-setup", f"export HF_TOKEN={SECRET}", "--slurm-setup", "wandb login known-secret-value",
            "--then", f"MY_TOKEN='{SECRET}' benchmark report")
    stored, lifted = plan_json(
        Redactor({"WANDB_API_KEY": "known-secret-value"}), argv, command=("python t.py",), backend="slurm",
        slurm_setup=(argv[1], argv[3]), then=argv[5])
    assert SECRET not in stored and "known-secret-value" not in stored
    plan = json.loads(stored)
    assert plan["backend"]["setup"] == ['export HF_TOKEN="$HF_TOKEN"', 'wandb login "$WANDB_API_KEY"']
    assert plan["backend"]["then"] == 'MY_TOKEN="$MY_TOKEN" benchmark report'
    assert lifted == {"HF_TOKEN": SECRET, "MY_TOKEN": SECRET}
    assert plan["argv"][1] == "export HF_TOKEN=***"
    # A local pool ignores setup lines, but argv keeps them: masked all the same.
    stored, _ = plan_json(None, argv[:2], command=("python t.py",), workers=1, slurm_setup=(argv[1],))
    assert SECRET not in stored


def test_a_secret_in_setup_or_then_stays_out_of_the_dry_run(cwd: Path) -> None:
    template = str(REPO / "templates" / "trl.slurm_template")
    result = run_cli("--command", "python t.py", "--slurm-template-path", template,
                     "--slurm-setup", f"export HF_TOKEN={SECRET}", "--then", f"MY_TOKEN={SECRET} benchmark report",
                     "--dry-run", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert 'export HF_TOKEN="$HF_TOKEN"' in result.stdout and 'MY_TOKEN="$MY_TOKEN" benchmark report' in result.stdout


def test_a_template_path_that_is_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="is a directory"):
        make_plan(LaunchRequest(command=("true",), slurm_template_path=str(tmp_path)), [], Redactor({}))


@pytest.mark.parametrize(("field", "value"), [
    ("poll_interval", 0.0), ("poll_interval", -1.0), ("poll_interval", math.nan), ("poll_interval", math.inf),
    ("grace_period", -1.0), ("grace_period", math.nan),
])
def test_intervals_must_be_sensible_numbers_of_seconds(field: str, value: float) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(PlanError, match=flag):
        make_plan(LaunchRequest(command=("true",), backend="slurm", **{field: value}), [], Redactor({}))
    make_plan(LaunchRequest(command=("true",), backend="slurm", grace_period=0.0), [], Redactor({}))
