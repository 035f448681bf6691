"""What sbatch reads in a rendered batch script: its #SBATCH options, and the log paths they set.

sbatch reads `#SBATCH` lines only up to the first command of the script and silently ignores later
ones (TRL's template puts `{{nodes}}` after `module load cuda/12.1`, so its --slurm-nodes never took
effect). Slurm does not create the folder of --output / --error: a missing one fails the task before
its script runs, with no log at all.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# Short options that take a value, by their long names (the ones that matter here).
_SHORT = {"o": "output", "e": "error", "J": "job-name", "p": "partition", "t": "time", "a": "array", "N": "nodes"}
# Slurm's filename patterns: %A array job id, %a task index, %j job id, %N first node, %u user, %x job
# name, %% a percent sign; an optional number pads with zeros (%4a).
_PATTERN = re.compile(r"%(\d*)([AajNux%])")


@dataclass
class BatchScript:
    options: dict[str, str] = field(default_factory=dict)
    """long option name -> value, from the #SBATCH lines sbatch reads"""
    ignored: list[tuple[int, str]] = field(default_factory=list)
    """(line number, text) of the #SBATCH lines after the first command, which sbatch ignores"""


def parse(script: str) -> BatchScript:
    parsed = BatchScript()
    in_header = True
    for number, line in enumerate(script.splitlines(), 1):
        text = line.strip()
        if text.startswith("#SBATCH"):
            if in_header:
                parsed.options.update(_options(text.removeprefix("#SBATCH")))
            else:
                parsed.ignored.append((number, text))
        elif text and not text.startswith("#"):
            in_header = False
    return parsed


def _options(text: str) -> dict[str, str]:
    words = shlex.split(text, comments=True)
    options, i = {}, 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            name, sep, value = word[2:].partition("=")
            if not sep and i + 1 < len(words) and not words[i + 1].startswith("-"):
                value, i = words[i + 1], i + 1
            options[name] = value
        elif word.startswith("-") and len(word) >= 2 and word[1] in _SHORT:
            value = word[2:] or (words[i + 1] if i + 1 < len(words) else "")
            i += 0 if word[2:] else 1
            options[_SHORT[word[1]]] = value
        i += 1
    return options


def log_patterns(script: BatchScript, cwd: Path) -> list[Path]:
    """The absolute patterns of the task's output and error files (Slurm's default: slurm-%A_%a.out)."""
    patterns = [script.options.get("output") or "slurm-%A_%a.out"]
    if script.options.get("error"):
        patterns.append(script.options["error"])
    return [cwd / pattern for pattern in patterns]


def expand(pattern: str, **values: str | int) -> str:
    """`pattern` with the fields given replaced (A, a, j, N, u, x); the others stay, for a later call.

    `%%` becomes `%` only once no field is left to fill, so that a later call does not read `%%j` as `%j`.
    """

    def replace(match: re.Match[str]) -> str:
        width, key = match.groups()
        if key not in values:
            return match[0]
        return str(values[key]).zfill(int(width)) if width else str(values[key])

    expanded = _PATTERN.sub(replace, pattern)
    return expanded if unresolved(expanded) else expanded.replace("%%", "%")


def unresolved(pattern: str) -> bool:
    """Whether a field other than %% is still to be filled."""
    return any(key != "%" for _, key in _PATTERN.findall(pattern))


def first_node(nodelist: str) -> str:
    """Slurm's %N: the first node of a node list such as `node[1-2],gpu3`."""
    match = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
    return (match[1] + (match[2] or "")) if match else nodelist
