"""Keep secrets out of everything the harness writes: manifest, rendered scripts, its own output.

Secret values never reach disk. In a command, a secret is replaced by a reference to its variable:
an inline assignment `WANDB_API_KEY=abc python ...` becomes `WANDB_API_KEY="$WANDB_API_KEY" python ...`
and the value travels to the job through the environment, so the stored command runs the same way.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping

_SECRET_NAME = re.compile(r"(^WANDB_API_KEY$|^HF_TOKEN$|_TOKEN$|_KEY$|_SECRET$|PASSWORD)", re.IGNORECASE)
_INLINE_ASSIGNMENT = re.compile(r"""(?<![\w$])([A-Za-z_][A-Za-z0-9_]*)=('[^']*'|"[^"]*"|[^\s;&|]+)""")
_REFERENCE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="\$\1"')
# A secret of one or two characters would blank out every matching character of the text; such a
# value is no secret anyway, and the name-based rewrite of commands still applies to it.
_MIN_SECRET_LENGTH = 4
MASK = "***"


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def referenced_secrets(command: str) -> list[str]:
    """The secret variables a stored command takes from the environment."""
    return _REFERENCE.findall(command)


class Redactor:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.names: dict[str, str] = {}  # secret value -> its variable
        for name, value in environ.items():
            if is_secret_name(name):
                self._remember(name, value)

    def _remember(self, name: str, value: str) -> None:
        if len(value) >= _MIN_SECRET_LENGTH:
            self.names.setdefault(value, name)

    def _replace(self, text: str, by_name: bool) -> str:
        # Longest first, so a secret that contains another is replaced whole.
        for value in sorted(self.names, key=len, reverse=True):
            text = text.replace(value, f'"${self.names[value]}"' if by_name else MASK)
        return text

    def text(self, text: str) -> str:
        return self._replace(text, by_name=False)

    def command(self, command: str) -> tuple[str, dict[str, str]]:
        """The command safe to store, and the secret variables the job's environment must carry."""
        lifted: dict[str, str] = {}

        def lift(match: re.Match[str]) -> str:
            name, value = match[1], match[2]
            if not is_secret_name(name) or value == f'"${name}"':
                return match[0]
            lifted[name] = shlex.split(value)[0] if value.strip("'\"") else ""
            self._remember(name, lifted[name])
            return f'{name}="${name}"'

        return self._replace(_INLINE_ASSIGNMENT.sub(lift, command), by_name=True), lifted
