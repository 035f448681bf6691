"""Planning: commands x seeds -> jobs.

A *variant* is one `--command`; a *job* is one variant run with one seed. The plan is pure data:
no process is started and nothing is written here.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

# `name=python train.py ...` names a variant explicitly. Upper-case names are left alone because
# `CUDA_LAUNCH_BLOCKING=1 python ...` is an environment assignment, not a variant name.
_NAME_PREFIX = re.compile(r"^(?P<name>[a-z0-9][A-Za-z0-9_.+-]*)=(?P<command>\S.*)$", re.DOTALL)
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_EXP_NAME_FLAGS = ("--ppo_config.exp_name", "--exp-name", "--exp_name")
_SLUG_MAX = 40
_LAUNCHERS = {"-m", "srun", "accelerate", "launch", "torchrun"}
_PYTHON = re.compile(r"python[0-9.]*")
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Variant:
    name: str
    command: str


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
        if flag in _EXP_NAME_FLAGS:
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
    # Two variants with one name would share logs and W&B groups: number the repeats.
    seen: dict[str, int] = {}
    unique = []
    for variant in variants:
        count = seen.get(variant.name, 0) + 1
        seen[variant.name] = count
        unique.append(variant if count == 1 else Variant(f"{variant.name}-{count}", variant.command))
    return unique


def seeds(start_seed: int, num_seeds: int) -> list[int]:
    if num_seeds < 1:
        raise PlanError(f"--num-seeds must be at least 1, got {num_seeds}")
    if start_seed < 0:
        raise PlanError(f"--start-seed must not be negative, got {start_seed}")
    return list(range(start_seed, start_seed + num_seeds))


def expand(variants: list[Variant], seed_list: list[int], seed_flag: str) -> list[Job]:
    """Every variant with every seed, seeds varying fastest (TRL's order)."""
    return [
        Job(variant.name, seed, f"{variant.command} {seed_flag} {seed}" if seed_flag else variant.command)
        for variant in variants
        for seed in seed_list
    ]
