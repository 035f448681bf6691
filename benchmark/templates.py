"""Render a Slurm batch-script template (jinja2) with TRL's variables and ours.

The variables and their meanings are listed at the top of templates/trl.slurm_template.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2
import jinja2.nodes
from jinja2 import meta

from benchmark.manifest import EXIT_DIR
from benchmark.plan import DEFAULT_TEMPLATE as DEFAULT_TEMPLATE  # re-exported: the template a plan defaults to

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateError(Exception):
    """A template that cannot be rendered: missing file, syntax error, undefined variable."""


class UndefinedVariableError(TemplateError):
    def __init__(self, variable: str, path: Path, line: int | None, known: Sequence[str]) -> None:
        self.variable, self.path, self.line = variable, path, line
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: undefined template variable '{variable}' (known: {', '.join(sorted(known))})")


def render(
    template: Path | str,
    *,
    command: str,
    seeds: Sequence[int],
    run_dir: Path | str,
    workers: int = 0,
    gpus_per_task: int = 1,
    total_cpus: int = 1,
    ntasks: int = 1,
    nodes: int | None = None,
    job_name: str = "trl",
    partition: str | None = None,
    time: str | None = None,
    mem: str | None = None,
    log_path: str | None = None,
    extra_sbatch: Sequence[str] = (),
    setup: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    task_env: Mapping[str, Sequence[str]] | None = None,
    secret_env: Sequence[str] = (),
    seed_flag: str = "--seed",
) -> str:
    """The batch script for one variant: a job array with one task per seed.

    `log_path` defaults to RUN_DIR/logs/%x_%A_%a.out. `env` holds the variables of every task,
    `task_env` those of each task (one value per seed). Secrets are passed by name only (`secret_env`):
    the job reads them from the submitting environment, so their values never reach the script.
    """
    path = Path(template)
    if not seeds:
        raise ValueError("no seeds to render")
    if workers < 0 or gpus_per_task < 0 or ntasks < 1 or total_cpus < 1:
        raise ValueError(
            f"need workers >= 0, gpus_per_task >= 0, ntasks >= 1, total_cpus >= 1; got {workers}, "
            f"{gpus_per_task}, {ntasks}, {total_cpus}"
        )
    env, task_env = dict(env or {}), dict(task_env or {})
    for name in [*env, *task_env, *secret_env]:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"not an environment variable name: {name!r}")
    if leaked := (set(env) | set(task_env)) & set(secret_env):
        raise ValueError(f"secret variables must not be given values: {', '.join(sorted(leaked))}")
    if uneven := [name for name, values in task_env.items() if len(values) != len(seeds)]:
        raise ValueError(f"task_env needs one value per seed: {', '.join(uneven)}")

    total_gpus = gpus_per_task * ntasks
    throttle = f"%{workers}" if workers else ""
    values = {
        "array": f"0-{len(seeds) - 1}{throttle}",
        "seeds": f"({' '.join(str(seed) for seed in seeds)})",
        "len_seeds": len(seeds),
        "command": command,
        "gpus_per_task": gpus_per_task,
        "cpus_per_gpu": math.ceil(total_cpus / total_gpus) if total_gpus else 0,
        "cpus_per_task": math.ceil(total_cpus / ntasks),
        "ntasks": ntasks,
        "nodes": f"#SBATCH --nodes={nodes}" if nodes is not None else "",
        "job_name": job_name,
        "partition": partition,
        "time": time,
        "mem": mem,
        "run_dir": str(run_dir),
        "log_path": log_path or str(Path(run_dir) / "logs" / "%x_%A_%a.out"),
        "extra_sbatch": list(extra_sbatch),
        "setup": list(setup),
        "env": env,
        # Bash arrays, as `seeds` is: task i takes value i.
        "task_env": {name: f"({' '.join(shlex.quote(v) for v in values)})" for name, values in task_env.items()},
        "secret_env": list(secret_env),
        "seed_flag": seed_flag,
        "exit_dir": str(Path(run_dir) / EXIT_DIR),
    }
    return _render_file(path, values)


def _render_file(path: Path, values: dict[str, object]) -> str:
    if not path.is_file():
        raise TemplateError(f"template file not found: {path}")
    template, free_names = _compile(path, path.stat().st_mtime_ns)
    # Checked before rendering, so a variable in a branch not taken is caught too.
    for name, line in free_names:
        if name not in values and name not in template.environment.globals:
            raise UndefinedVariableError(name, path, line, list(values))
    try:
        return template.render(values)
    except jinja2.UndefinedError as error:  # e.g. a missing key of `env`
        raise TemplateError(f"{path}:{_template_line(error, template.filename)}: {error}") from None


@functools.lru_cache(maxsize=16)
def _compile(path: Path, mtime_ns: int) -> tuple[jinja2.Template, list[tuple[str, int]]]:
    """The compiled template and its free variables. A sweep renders one template per variant, twice
    (dry-run check, then submission): compiling once saves most of that. Keyed on the file's mtime."""
    del mtime_ns  # part of the cache key only: an edited template compiles anew
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(path.parent),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["q"] = shlex.quote
    try:
        tree = environment.parse(path.read_text(), path.name, str(path))
        template = environment.get_template(path.name)
    except jinja2.TemplateSyntaxError as error:
        raise TemplateError(f"{path}:{error.lineno}: {error.message}") from None
    return template, _free_names(tree)


def _free_names(tree: jinja2.nodes.Template) -> list[tuple[str, int]]:
    """The template's free variables, each with its first line, in order of appearance."""
    free = meta.find_undeclared_variables(tree)
    first: dict[str, int] = {}
    for node in tree.find_all(jinja2.nodes.Name):
        if node.name in free:
            first.setdefault(node.name, node.lineno)
    return sorted(first.items(), key=lambda item: item[1])


def _template_line(error: Exception, filename: str | None) -> int | None:
    # jinja2 rewrites the traceback so that template frames carry the template's file and line.
    tb: types.TracebackType | None = error.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
