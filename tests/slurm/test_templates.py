"""Rendering batch scripts from jinja2 templates (no cluster needed)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest

from benchmark.templates import DEFAULT_TEMPLATE, TemplateError, UndefinedVariableError, render

TRL_TEMPLATE = Path(__file__).parent / "trl_original.slurm_template"


def trl_render(source: str, values: dict) -> str:
    """What TRL's benchmark.py writes: plain string replacement."""
    seeds, nodes = values["seeds"], values["nodes"]
    for name, value in {
        "array": f"0-{len(seeds) - 1}%{values['workers']}",
        "seeds": f"({' '.join(map(str, seeds))})",
        "len_seeds": len(seeds),
        "command": values["command"],
        "gpus_per_task": values["gpus_per_task"],
        "cpus_per_gpu": math.ceil(values["total_cpus"] / (values["gpus_per_task"] * values["ntasks"])),
        "ntasks": values["ntasks"],
        "nodes": f"#SBATCH --nodes={nodes}" if nodes is not None else "",
    }.items():
        source = source.replace("{{" + name + "}}", str(value))
    return source


def ours(tmp_path: Path, **values: object) -> str:
    return render(DEFAULT_TEMPLATE, run_dir=tmp_path, **{"command": "python train.py", "seeds": [1, 2, 3], **values})  # type: ignore[arg-type]


def header_and_body(script: str) -> tuple[list[str], list[str]]:
    """sbatch reads #SBATCH lines only up to the first command."""
    lines = script.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    return lines[:first_command], lines[first_command:]


@pytest.mark.parametrize("nodes", [None, 2])
def test_trl_template_renders_as_trl_did(tmp_path, nodes):
    values = dict(
        command="python ppo.py --log_with wandb",
        seeds=[1, 2, 3],
        workers=2,
        gpus_per_task=1,
        total_cpus=12,
        ntasks=2,
        nodes=nodes,
    )
    expected = trl_render(TRL_TEMPLATE.read_text(), values)
    assert render(TRL_TEMPLATE, run_dir=tmp_path, **values) == expected  # type: ignore[arg-type]
    assert "#SBATCH --cpus-per-gpu=6" in expected and "seeds=(1 2 3)" in expected


def test_workers_zero_means_no_throttle(tmp_path):
    assert "#SBATCH --array=0-2\n" in ours(tmp_path, workers=0)
    assert "#SBATCH --array=0-2%2\n" in ours(tmp_path, workers=2)


def test_nodes_line_lands_in_the_header(tmp_path):
    header, body = header_and_body(ours(tmp_path, nodes=2))
    assert "#SBATCH --nodes=2" in header
    assert not any(line.startswith("#SBATCH") for line in body)
    assert not any("--nodes" in line for line in ours(tmp_path).splitlines())


def test_optional_lines_appear_only_when_set(tmp_path):
    bare = ours(tmp_path)
    assert not any(flag in bare for flag in ("--partition", "--time", "--mem", "--constraint", "module"))
    full, _ = header_and_body(
        ours(tmp_path, partition="gpu", time="01:00:00", mem="4G", extra_sbatch=["--constraint=h100", "--exclusive"])
    )
    for line in ("--partition=gpu", "--time=01:00:00", "--mem=4G", "--constraint=h100", "--exclusive"):
        assert f"#SBATCH {line}" in full


def test_cpu_only_tasks_ask_for_cpus_per_task(tmp_path):
    header, _ = header_and_body(ours(tmp_path, gpus_per_task=0, total_cpus=5, ntasks=2))
    assert "#SBATCH --cpus-per-task=3" in header
    assert not any("gpu" in line for line in header)


def test_setup_env_and_secrets(tmp_path):
    script = ours(
        tmp_path,
        setup=["module load cuda/12.1"],
        env={"WANDB_MODE": "offline", "NOTE": "a b"},
        secret_env=["WANDB_API_KEY"],
    )
    _, body = header_and_body(script)
    assert "export WANDB_MODE=offline" in body and "export NOTE='a b'" in body
    assert "module load cuda/12.1" in body
    assert body.index("module load cuda/12.1") < next(i for i, line in enumerate(body) if line.startswith("srun"))
    # The secret is only referenced, never assigned.
    assert '"$WANDB_API_KEY"' in script and "WANDB_API_KEY=" not in script
    with pytest.raises(ValueError, match="WANDB_API_KEY"):
        ours(tmp_path, env={"WANDB_API_KEY": "hunter2"}, secret_env=["WANDB_API_KEY"])


def test_rendered_script_is_valid_bash(tmp_path):
    script = tmp_path / "job.slurm"
    script.write_text(ours(tmp_path, setup=["true"], env={"X": "'quoted'"}, secret_env=["TOKEN"], nodes=1))
    subprocess.run(["bash", "-n", str(script)], check=True)


def run_as_slurm(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a rendered script with bash in tmp_path, as Slurm would run array task 7_1, with srun stubbed out."""
    (tmp_path / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (tmp_path / "srun").chmod(0o755)
    (tmp_path / "job.slurm").write_text(script)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1", **env}
    return subprocess.run(["bash", "job.slurm"], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_exit_code_recorded_even_when_setup_fails(tmp_path):
    for setup, command, code in [([], "true", "0"), ([], "false", "1"), (["exit 4"], "true", "4")]:
        run_as_slurm(tmp_path, ours(tmp_path, setup=setup, command=command))
        assert (tmp_path / "exit" / "7_1").read_text() == f"{code}\n"


SECRET = "abcd1234secret"
# Commands srun cannot execve as they are; each prints its seed, the second argument its `sh -c` gets.
SHELL_COMMANDS = {
    "env": ("FOO=1 sh -c 'echo $FOO $2' x", "1 {seed}"),
    "cd": ("cd sub && sh -c 'echo in $(basename $PWD) $2' x", "in sub {seed}"),
    "secret": ('MY_TOKEN="$MY_TOKEN" sh -c \'echo ${#MY_TOKEN} $2\' x', f"{len(SECRET)} {{seed}}"),
}


@pytest.mark.parametrize("name", SHELL_COMMANDS)
def test_the_command_runs_as_a_shell_command_with_the_seed_flag_as_arguments(tmp_path, name):
    (tmp_path / "sub").mkdir()
    command, printed = SHELL_COMMANDS[name]
    script = ours(tmp_path, command=command, seeds=[5, 6], secret_env=["MY_TOKEN"] if name == "secret" else [])
    result = run_as_slurm(tmp_path, script, MY_TOKEN=SECRET)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == printed.format(seed=6)
    without_flag = run_as_slurm(tmp_path, ours(tmp_path, command="echo -n hi; echo \" $#\"", seed_flag=""))
    assert without_flag.stdout.splitlines()[-1] == "hi 0"


def test_unknown_variable_names_variable_file_and_line(tmp_path):
    template = tmp_path / "bad.slurm_template"
    template.write_text("#!/bin/bash\n#SBATCH --array={{ array }}\n{% if false %}{{ colour }}{% endif %}\n")
    with pytest.raises(UndefinedVariableError) as error:
        render(template, command="true", seeds=[1], run_dir=tmp_path)
    assert (error.value.variable, error.value.path, error.value.line) == ("colour", template, 3)
    assert f"{template}:3: undefined template variable 'colour'" in str(error.value)


def test_missing_key_at_render_time_names_the_line(tmp_path):
    template = tmp_path / "env.slurm_template"
    template.write_text("#!/bin/bash\n\necho {{ env.MISSING }}\n")
    with pytest.raises(TemplateError, match=rf"{template}:3: .*MISSING"):
        render(template, command="true", seeds=[1], run_dir=tmp_path)


def test_syntax_error_names_the_line(tmp_path):
    template = tmp_path / "broken.slurm_template"
    template.write_text("#!/bin/bash\n{% if %}\n")
    with pytest.raises(TemplateError, match=rf"{template}:2: "):
        render(template, command="true", seeds=[1], run_dir=tmp_path)


def test_missing_template_file(tmp_path):
    with pytest.raises(TemplateError, match="template file not found: .*nope.slurm_template"):
        render(tmp_path / "nope.slurm_template", command="true", seeds=[1], run_dir=tmp_path)


def test_sbatch_reads_directives_only_before_the_first_command() -> None:
    from benchmark import sbatch_script

    script = sbatch_script.parse(
        "#!/bin/bash\n#SBATCH --job-name=trl\n#SBATCH -o slurm/logs/%x_%j.out --partition hopper\n"
        "##SBATCH --exclude=n1\n\nmodule load cuda/12.1\n#SBATCH --nodes=1\necho hi\n"
    )
    assert script.options == {"job-name": "trl", "output": "slurm/logs/%x_%j.out", "partition": "hopper"}
    assert script.ignored == [(7, "#SBATCH --nodes=1")]
    assert sbatch_script.parse("#!/bin/bash\necho\n").options == {}


def test_log_patterns_expand_as_slurm_does(tmp_path: Path) -> None:
    from benchmark import sbatch_script

    pattern = "logs/%x_%A_%4a_%j_%N_%u_100%%.out"
    partly = sbatch_script.expand(pattern, x="trl", A=41, a=3, u="me")
    assert partly == "logs/trl_41_0003_%j_%N_me_100%%.out" and sbatch_script.unresolved(partly)
    assert sbatch_script.expand(partly, j=44, N=sbatch_script.first_node("node[1-2],gpu7")) == (
        "logs/trl_41_0003_44_node1_me_100%.out")
    assert sbatch_script.first_node("node2") == "node2"
    default = sbatch_script.log_patterns(sbatch_script.parse("#!/bin/bash\ntrue\n"), tmp_path)
    assert default == [tmp_path / "slurm-%A_%a.out"]


def test_dry_run_warns_of_ignored_directives_and_shows_the_flags_that_override(tmp_path: Path) -> None:
    from cli import run_cli

    result = run_cli("--command", "echo trl", "--slurm-template-path", str(TRL_TEMPLATE), "--slurm-nodes", "2",
                     "--slurm-gpus-per-task", "1", "--slurm-partition", "debug", "--slurm-time", "1:00:00",
                     "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"# warning: {TRL_TEMPLATE}:13: sbatch ignores '#SBATCH --nodes=2'" in result.stdout
    assert "# submitted with: sbatch --partition=debug --time=1:00:00" in result.stdout
    assert not (tmp_path / "slurm").exists()  # a dry run makes nothing


@pytest.mark.slurm
def test_any_shell_command_runs_on_slurm_and_a_secret_stays_out_of_the_run_dir(tmp_path: Path) -> None:
    from cli import records, run_cli

    (tmp_path / "sub").mkdir()
    commands = [("--command", f"{name}={command}") for name, (command, _) in SHELL_COMMANDS.items()]
    commands[-1] = ("--command", f"secret=MY_TOKEN={SECRET} sh -c 'echo ${{#MY_TOKEN}} $2' x")  # inline, as users write
    result = run_cli(*(arg for pair in commands for arg in pair), "--num-seeds", "2", "--start-seed", "5", "--workers",
                     "2", "--slurm-template-path", str(DEFAULT_TEMPLATE), "--slurm-total-cpus", "1", "--poll-interval",
                     "0.3", "--wait", "--run-dir", "r", cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = records(tmp_path / "r")
    for name, (_, printed) in SHELL_COMMANDS.items():
        for seed in (5, 6):
            job = jobs[f"{name}/{seed}"]
            assert job["state"] == "COMPLETED", job
            assert printed.format(seed=seed) in (tmp_path / "r" / job["log"]).read_text()
    files = [path for path in (tmp_path / "r").rglob("*") if path.is_file()]
    assert files and not [path for path in files if SECRET.encode() in path.read_bytes()]
    assert SECRET not in result.stdout + result.stderr
