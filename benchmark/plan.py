"""Planning: commands x seeds -> jobs, and every setting a backend needs, checked and settled.

A *variant* is one `--command`; a *job* is one variant run with one seed. The `Plan` is frozen data,
written as the manifest's first line and read back typed, so `status` and `resume` in a later process
act exactly as the launch did; choices such as the GPUs or submitit's cluster are made once, here.
No job is started and nothing is written here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from importlib import resources
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, ClassVar, Literal

from benchmark.redact import Redactor
from benchmark.tags import auto_tags, git_commit, git_tag, pr_number, resolve_ref
from benchmark.workload import EXP_NAME_FLAGS

# The Slurm template of a plan that names none. Here, not in templates.py: settling a plan needs no jinja2.
# It ships inside the package (package data); in a checkout that file links to templates/, the one copy.
DEFAULT_TEMPLATE = Path(str(resources.files("benchmark") / "trl.slurm_template")).resolve()

# `name=python train.py ...` names a variant explicitly. Upper-case names are left alone because
# `CUDA_LAUNCH_BLOCKING=1 python ...` is an environment assignment, not a variant name.
_NAME_PREFIX = re.compile(r"^(?P<name>[a-z0-9][A-Za-z0-9_.+-]*)=(?P<command>\S.*)$", re.DOTALL)
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SLUG_MAX = 40
_LAUNCHERS = {"-m", "srun", "accelerate", "launch", "torchrun"}
_PYTHON = re.compile(r"python[0-9.]*")
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Characters that end a word for bash, outside quotes.
_METACHARACTERS = " \t\n;&|()<>"
# Words whose value only bash knows: a variable, a command's output, a glob.
_EXPANDED = re.compile(r"[$`*?\[]")


@dataclass(frozen=True)
class Variant:
    name: str
    command: str
    # `--ref`: the ref as given, the commit whose code this variant runs (in a worktree of its own),
    # and its W&B tags.
    ref: str | None = None
    commit: str | None = None
    wandb_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    variant: str
    seed: int
    command: str

    @property
    def id(self) -> str:
        return f"{self.variant}/{self.seed}"


class PlanError(ValueError):
    """A plan that cannot be run; the message is for the user."""


def variant_folder(name: str) -> str:
    """The variant's name as one path component, for its logs, batch scripts and exit files: letters,
    digits and `._+-` kept, any other character `_`, and so are leading dots: never hidden, `.` or `..`."""
    folder = "".join(c if c.isalnum() or c in "._+-" else "_" for c in name)
    dots = len(folder) - len(folder.lstrip("."))
    return "_" * dots + folder[dots:] or "_"


def parse_variant(spec: str) -> Variant:
    """Name a `--command` value: an explicit `name=` prefix, else its exp name, else a slug."""
    spec = spec.strip()
    if not spec:
        raise PlanError("--command is empty: give the command to run, e.g. --command 'python train.py'")
    match = _NAME_PREFIX.match(spec)
    if match and not _ENV_NAME.match(match["name"]):
        return Variant(match["name"], match["command"].strip())
    return Variant(_exp_name(spec) or _slug(spec), spec)


def _tokens(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError as error:  # unbalanced quotes: the shell would refuse it too
        raise PlanError(f"cannot parse --command {command!r}: {error}") from None


def _exp_name(command: str) -> str | None:
    tokens = _tokens(command)
    for i, token in enumerate(tokens):
        flag, eq, value = token.partition("=")
        if flag in EXP_NAME_FLAGS:
            if eq:
                return value or None
            if i + 1 < len(tokens):
                return tokens[i + 1]
    return None


def _slug(command: str) -> str:
    """A short readable name: the script or module plus its arguments, without interpreter noise."""
    words = []
    for token in _tokens(command):
        if _ENV_ASSIGNMENT.match(token):
            continue
        token = token.rsplit("/", 1)[-1].removesuffix(".py")
        if token in _LAUNCHERS or _PYTHON.fullmatch(token):
            continue
        token = token.lstrip("-").removeprefix("ppo_config.")
        words.append(token)
    slug = re.sub(r"[^A-Za-z0-9_.+]+", "-", "-".join(words)).strip("-.")
    return slug[:_SLUG_MAX].rstrip("-.") or "job"


def make_variants(commands: list[str]) -> list[Variant]:
    variants = [parse_variant(command) for command in commands]
    if not variants:
        raise PlanError("no --command given")
    return _numbered(variants)


def _numbered(variants: list[Variant]) -> list[Variant]:
    """Two variants with one name would share logs and W&B groups: the repeats are numbered."""
    seen: dict[str, int] = {}
    unique = []
    for variant in variants:
        count = seen.get(variant.name, 0) + 1
        seen[variant.name] = count
        unique.append(variant if count == 1 else dataclasses.replace(variant, name=f"{variant.name}-{count}"))
    return unique


def seeds(start_seed: int, num_seeds: int) -> list[int]:
    if num_seeds < 1:
        raise PlanError(f"--num-seeds must be at least 1, got {num_seeds}")
    if start_seed < 0:
        raise PlanError(f"--start-seed must not be negative, got {start_seed}")
    return list(range(start_seed, start_seed + num_seeds))


def _scan(command: str) -> tuple[int, int | None]:
    """Where the last simple command of `command` starts (0: it is one), and where a comment starts (None:
    none), as bash reads them: outside quotes, backquotes and parentheses (`$(...)`, subshells)."""
    start, depth, quote, i = 0, 0, "", 0
    word_start = True
    while i < len(command):
        c = command[i]
        at_word_start, word_start = word_start, False
        if quote:
            if c == "\\" and quote != "'":
                i += 1
            elif c == quote:
                quote = ""
        elif c == "\\":
            i += 1  # the next character is a literal one (a newline: a continued line)
        elif c in "'\"`":
            quote = c
        elif c == "#" and at_word_start and depth == 0:  # bash's comments begin a word; `a#b` is no comment
            return start, i
        elif c in _METACHARACTERS:
            word_start = True
            depth = max(depth + (c == "(") - (c == ")"), 0)
            # `2>&1`, `<&0`, `>|` and `&>` are redirections, not operators.
            redirection = (c in "&|" and command[i - 1 : i] in ("<", ">")) or command[i : i + 2] == "&>"
            if depth == 0 and c in ";&|\n" and not redirection:
                i += command[i : i + 2] in ("&&", "||", "|&", ";;")  # past a two-character operator
                start = i + 1
        i += 1
    return start, None


def seed_target(command: str) -> str | None:
    """Where `command` is several simple commands (`a | b`, `a && b`, `a; b`, `a & b`), the last one, as
    text: the one the seed flag appended to `command` goes to. None for a single simple command."""
    start, _ = _scan(command)
    return command[start:].strip() if start else None


def _check_seed_flag(variant: Variant) -> None:
    """The seed flag is appended to the command as text: refuse a command that would lose it."""
    start, comment = _scan(variant.command)
    if comment is not None:
        raise PlanError(f"{variant.name}: the command's shell comment {variant.command[comment:]!r} would swallow "
                        "the seed flag appended to it: put the command in a wrapper script, or drop the comment")
    if start and not variant.command[start:].strip():
        raise PlanError(f"{variant.name}: the command ends with {variant.command.rstrip()[-1]!r}, so the seed flag "
                        "appended to it would run on its own, as a command: drop it, or use a wrapper script")


def expand(variants: list[Variant], seed_list: list[int], seed_flag: str) -> list[Job]:
    """Every variant with every seed, seeds varying fastest (TRL's order)."""
    return [
        Job(variant.name, seed, f"{variant.command} {seed_flag} {seed}" if seed_flag else variant.command)
        for variant in variants
        for seed in seed_list
    ]


def detect_gpus(requested: str | None) -> list[str]:
    """`--gpus`, else CUDA_VISIBLE_DEVICES, else what nvidia-smi lists, else none."""
    if requested is None:
        requested = os.environ.get("CUDA_VISIBLE_DEVICES")
    if requested is None and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout
            requested = ",".join(out.split())
        except (OSError, subprocess.SubprocessError):
            requested = None
    return [g.strip() for g in (requested or "").split(",") if g.strip()]


@dataclass(frozen=True)
class LocalSettings:
    """The local pool: at most `workers` jobs at once, each on `gpus_per_job` of `gpus` (none: no GPU)."""

    name: ClassVar[str] = "local"
    workers: int = 1
    gpus: tuple[str, ...] = ()
    gpus_per_job: int = 0
    jobs_per_gpu: int = 1

    @property
    def concurrency(self) -> int:
        if not self.gpus:
            return self.workers
        return min(self.workers, len(self.gpus) * self.jobs_per_gpu // self.gpus_per_job)


@dataclass(frozen=True)
class ArraySettings:
    """What a job array asks of Slurm, for both the slurm and the submitit backend."""

    workers: int = 0  # tasks of one array at once; 0: no limit
    gpus_per_task: int = 0
    total_cpus: int = 1
    ntasks: int = 1
    nodes: int | None = None
    partition: str | None = None
    time: str | None = None
    mem: str | None = None
    extra: tuple[str, ...] = ()  # more sbatch options
    setup: tuple[str, ...] = ()  # shell lines run before the command
    then: str | None = None  # the follow-up command
    wait: bool = False
    poll_interval: float = 5.0


@dataclass(frozen=True)
class SlurmSettings(ArraySettings):
    name: ClassVar[str] = "slurm"
    template: str = ""


@dataclass(frozen=True)
class SubmititSettings(ArraySettings):
    name: ClassVar[str] = "submitit"
    cluster: Literal["slurm", "local"] = "local"


BackendSettings = LocalSettings | SlurmSettings | SubmititSettings
_SETTINGS = {cls.name: cls for cls in typing.get_args(BackendSettings)}


@dataclass(frozen=True)
class Plan:
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    backend: BackendSettings = LocalSettings()
    seed_flag: str = "--seed"
    wandb_tags: tuple[str, ...] = ()  # added to each job's WANDB_TAGS
    max_retries: int = 0
    grace_period: float = 10.0  # seconds a stopped job gets between SIGTERM and SIGKILL
    # Where and what: the jobs run in `cwd`; the rest says what launched them.
    cwd: str = "."
    argv: tuple[str, ...] = ()
    created: float = 0.0
    host: str = ""
    git_commit: str | None = None

    def jobs(self) -> list[Job]:
        return expand(list(self.variants), list(self.seeds), self.seed_flag)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def command_of(self, variant: str) -> str:
        return self.variant(variant).command

    def notes(self) -> list[str]:
        """What the user may not expect of this plan, a line each, for the dry run and the launch."""
        if not self.seed_flag:
            return []
        return [f"note: {v.name}: `{self.seed_flag} {self.seeds[0]}` goes to the last command only: `{target}`"
                for v in self.variants if (target := seed_target(v.command))]

    def missing_programs(self) -> list[str]:
        """A warning for each Python program a command runs that is not here: a script that is no file in the
        jobs' folder, a module this Python cannot find. Warnings only: it may exist on the cluster alone."""
        warnings = []
        for variant in self.variants:
            if variant.commit:  # it runs in its ref's worktree, which the launch makes
                continue
            folder = Path(self.cwd)
            for words in _simple_commands(variant.command):
                if words[0] == "cd":
                    if len(words) != 2 or _EXPANDED.search(words[1]):
                        break  # a folder only bash knows: the next paths cannot be checked
                    folder = Path(os.path.normpath(folder / os.path.expanduser(words[1])))
                elif (program := _python_program(words)) and (problem := _missing(*program, folder)):
                    warnings.append(f"warning: {variant.name}: {problem}")
        return warnings

    def workdir(self, run_dir: Path, variant: str) -> Path:
        """Where the variant's jobs run: its ref's worktree under the run dir, else the launch's folder."""
        return run_dir.resolve() / "refs" / variant_folder(variant) if self.variant(variant).commit else Path(self.cwd)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["backend"] = {"name": self.backend.name, **data["backend"]}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data.get("backend"), dict):
            raise ValueError("a plan written by the harness before its plan was typed (2026-12-01): this version "
                             "cannot resume it; its logs and W&B runs are still there for `report --wandb-dir`")
        settings = dict(data["backend"])
        backend = _typed(_SETTINGS[settings.pop("name")], settings)
        variants = tuple(_typed(Variant, v) for v in data["variants"])
        return _typed(cls, data | {"backend": backend, "variants": variants})


def _simple_commands(command: str) -> list[list[str]]:
    """The words of each simple command of `command`, split at bash's operators (`&&`, `;`, `|`, ...);
    a redirection's target comes out as a command of its own, which runs no program."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: refused with the plan's own words elsewhere
        return []
    commands: list[list[str]] = [[]]
    for token in tokens:
        if set(token) <= set(";&|()<>"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def _python_program(words: list[str]) -> tuple[str, str, bool] | None:
    """What a simple command runs, if it runs Python: (its launcher as written, the script or module, whether
    a module), for `python X.py`, `python -m M`, `accelerate launch X.py` and `torchrun X.py`."""
    words = list(itertools.dropwhile(_ENV_ASSIGNMENT.match, words))
    name = words[0].rsplit("/", 1)[-1] if words else ""
    if _PYTHON.fullmatch(name):
        args, i = words[1:], 0
        while i < len(args) and args[i].startswith("-") and args[i] != "-":
            if args[i].startswith("-m"):
                module = args[i][2:] or (args[i + 1] if i + 1 < len(args) else "")
                return (f"{words[0]} -m", module, True) if module else None
            if args[i].startswith("-c"):
                return None
            i += 2 if args[i] in ("-W", "-X") else 1
        return (words[0], args[i], False) if i < len(args) and args[i] != "-" else None
    if name == "accelerate" and words[1:2] == ["launch"]:
        launcher, args = "accelerate launch", words[2:]
    elif name == "torchrun":
        launcher, args = words[0], words[1:]
    else:
        return None
    # Their options may take values, so the program is the word after -m, or the first one ending in .py.
    for i, word in enumerate(args):
        if word in ("-m", "--module"):
            return (f"{launcher} {word}", args[i + 1], True) if i + 1 < len(args) else None
        if word.endswith(".py") and not word.startswith("-"):
            return launcher, word, False
    return None


def _missing(launcher: str, program: str, is_module: bool, folder: Path) -> str | None:
    """Why `launcher program`, run in `folder`, would not find its program; None if it would, or if only bash knows."""
    if _EXPANDED.search(program):
        return None
    if not is_module:
        path = Path(os.path.expanduser(program))
        return None if (folder / path).is_file() else f"{launcher} {program}: no such file in {folder}"
    try:
        return None if _module_found(program, folder) else (
            f"{launcher} {program}: no such module in {folder} or in this Python ({sys.executable})")
    except (ImportError, ValueError):  # a name the finders refuse: say nothing rather than guess
        return None


def _module_found(name: str, folder: Path) -> bool:
    """Whether `python -m name` in `folder` finds its module. Searched only, never imported: importing even a
    parent package runs its code, which may be slow or start something."""
    if name in sys.modules:  # os.path, say: no finder knows it by that name
        return True
    parts = name.split(".")
    # `python -m` looks in its folder first; then sys.path and its finders (an editable install's included).
    spec = PathFinder.find_spec(parts[0], [str(folder)]) or importlib.util.find_spec(parts[0])
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return False
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    return spec is not None


def _typed(cls: type, data: dict[str, Any]) -> Any:
    """`cls(**data)`, JSON's lists back as the tuples the fields declare; an unknown key is an error."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            origin = typing.get_origin(hints[f.name])
            values[f.name] = tuple(value) if origin is tuple and isinstance(value, list) else value
    if unknown := set(data) - set(values):
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**values)


@dataclass(frozen=True)
class LaunchRequest:
    """What a launch asks for: the CLI's flags that make a plan, with the CLI's names and defaults."""

    command: tuple[str, ...] = ()
    num_seeds: int = 3
    start_seed: int = 1
    workers: int = 0
    auto_tag: bool = True
    slurm_template_path: str | None = None
    slurm_gpus_per_task: int | None = 1
    slurm_total_cpus: int | None = 50
    slurm_ntasks: int | None = 1
    slurm_nodes: int | None = None
    ref: tuple[str, ...] = ()
    seed_flag: str = "--seed"
    gpus: str | None = None
    gpus_per_job: int = 1
    jobs_per_gpu: int = 1
    max_retries: int = 0
    pr: int | None = None
    grace_period: float = 10.0
    backend: Literal["auto", "local", "slurm", "submitit"] = "auto"
    submitit_cluster: Literal["auto", "slurm", "local"] = "auto"
    slurm_partition: str | None = None
    slurm_time: str | None = None
    slurm_mem: str | None = None
    slurm_extra: tuple[str, ...] = ()
    slurm_setup: tuple[str, ...] = ()
    then: str | None = None
    wait: bool = False
    poll_interval: float = 5.0


def make_plan(request: LaunchRequest, argv: list[str], redactor: Redactor) -> tuple[Plan, dict[str, str]]:
    """The checked plan of a launch, and the secrets lifted out of its commands, setup lines and follow-up:
    the jobs take them from the environment, and only `"$NAME"` is ever stored."""
    lifted: dict[str, str] = {}

    def stored(text: str) -> str:
        command, found = redactor.command(text)
        lifted.update(found)
        return command

    variants = [dataclasses.replace(v, command=stored(v.command)) for v in make_variants(list(request.command))]
    # Whatever the backend: the redactor must know every inline secret before argv is masked.
    setup = tuple(stored(line) for line in request.slurm_setup)
    then = stored(request.then) if request.then else None
    if request.ref:
        variants = _at_refs(variants, list(request.ref), request.auto_tag)
    _check_names(variants)
    if request.seed_flag:
        for variant in variants:
            _check_seed_flag(variant)
    seed_list = seeds(request.start_seed, request.num_seeds)
    if request.workers < 0:
        raise PlanError(f"--workers must not be negative, got {request.workers}")
    if request.max_retries < 0:
        raise PlanError(f"--max-retries must not be negative, got {request.max_retries}")
    # Written so that NaN fails too; an infinite wait is never meant.
    if not 0 <= request.grace_period < math.inf:
        raise PlanError(f"--grace-period must be a number of seconds >= 0, got {request.grace_period}")
    if not 0 < request.poll_interval < math.inf:
        raise PlanError(f"--poll-interval must be a number of seconds > 0, got {request.poll_interval}")
    backend = request.backend if request.backend != "auto" else ("slurm" if request.slurm_template_path else "local")
    settings = _local(request) if backend == "local" else _array(request, backend, setup, then)
    if then and (isinstance(settings, LocalSettings) or getattr(settings, "cluster", None) == "local"):
        raise PlanError("--then needs Slurm: a local pool or submitit's local executor knows no dependencies")
    plan = Plan(
        variants=tuple(variants),
        seeds=tuple(seed_list),
        backend=settings,
        seed_flag=request.seed_flag,
        wandb_tags=tuple(auto_tags(pr_number(request.pr)) if request.auto_tag else ()),
        max_retries=request.max_retries,
        grace_period=request.grace_period,
        cwd=os.getcwd(),
        argv=tuple(redactor.text(a) for a in argv),
        created=time.time(),
        host=os.uname().nodename,
        git_commit=git_commit(),
    )
    return plan, lifted


def _check_names(variants: list[Variant]) -> None:
    """Each variant needs a folder of its own (logs, scripts, exit files) and a name that prints on one line."""
    folders: dict[str, str] = {}
    for variant in variants:
        if not variant.name.isprintable():
            raise PlanError(f"the variant name {variant.name!r} has a control character: name the variant "
                            "explicitly, e.g. --command 'name=python train.py ...'")
        folder = variant_folder(variant.name)
        if folder in folders:
            raise PlanError(f"the variants {folders[folder]!r} and {variant.name!r} would share the folder {folder}: "
                            "name them apart, e.g. --command 'name=python train.py ...'")
        folders[folder] = variant.name


def _at_refs(variants: list[Variant], refs: list[str], auto_tag: bool) -> list[Variant]:
    """Each command at each git ref: a variant named after the ref's `git describe` (prefixed with the
    command's name when there are several commands), tagged with it."""
    at_refs = []
    for ref in refs:
        commit = resolve_ref(ref)
        if commit is None:
            raise PlanError(f"--ref {ref}: no such git commit, branch or tag here")
        described = git_tag(commit) or commit[:12]
        for variant in variants:
            name = described if len(variants) == 1 else f"{variant.name}@{described}"
            at_refs.append(Variant(name, variant.command, ref, commit, (described,) if auto_tag else ()))
    return _numbered(at_refs)


def _local(request: LaunchRequest) -> LocalSettings:
    """Check the pool's settings against this machine before anything starts."""
    if request.workers == 0:
        return LocalSettings(workers=0)  # TRL's behaviour: the commands are printed, nothing runs
    gpus = detect_gpus(request.gpus)
    if request.jobs_per_gpu < 1:
        raise PlanError(f"--jobs-per-gpu must be at least 1, got {request.jobs_per_gpu}")
    if gpus and request.gpus_per_job > len(gpus):
        raise PlanError(f"each job asks for {request.gpus_per_job} GPUs but only {len(gpus)} exist: {','.join(gpus)}")
    if gpus and request.gpus_per_job < 1:
        raise PlanError(f"--gpus-per-job must be at least 1 where GPUs exist, got {request.gpus_per_job}")
    return LocalSettings(request.workers, tuple(gpus), request.gpus_per_job if gpus else 0, request.jobs_per_gpu)


def _array(
    request: LaunchRequest, backend: str, setup: tuple[str, ...], then: str | None
) -> SlurmSettings | SubmititSettings:
    common = ArraySettings(
        workers=request.workers,
        gpus_per_task=request.slurm_gpus_per_task or 0,
        total_cpus=request.slurm_total_cpus or 1,
        ntasks=request.slurm_ntasks or 1,
        nodes=request.slurm_nodes,
        partition=request.slurm_partition,
        time=request.slurm_time,
        mem=request.slurm_mem,
        extra=tuple(request.slurm_extra),
        setup=setup,
        then=then,
        wait=request.wait,
        poll_interval=request.poll_interval,
    )
    fields_ = {f.name: getattr(common, f.name) for f in dataclasses.fields(common)}
    if backend == "submitit":
        # Settled now, not at every `status`: a later shell without srun must not turn Slurm tasks LOST.
        cluster = request.submitit_cluster if request.submitit_cluster != "auto" else _submitit_detects()
        return SubmititSettings(**fields_, cluster=cluster)
    template = request.slurm_template_path or str(DEFAULT_TEMPLATE)
    if os.path.isdir(template):
        raise PlanError(f"--slurm-template-path {template}: is a directory, not a template file")
    if not os.path.isfile(template):
        raise PlanError(f"--slurm-template-path {template}: no such file")
    return SlurmSettings(**fields_, template=os.path.abspath(template))


def _submitit_detects() -> Literal["slurm", "local"]:
    import submitit  # imported here: it costs ~0.1 s of every start-up

    return "slurm" if submitit.AutoExecutor.which() == "slurm" else "local"
