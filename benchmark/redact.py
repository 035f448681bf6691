"""Keep secrets out of everything the harness writes: manifest, rendered scripts, its own output.

Secret values never reach disk. An inline assignment in a command (`WANDB_API_KEY=abc python ...`)
is rewritten to reference the variable (`WANDB_API_KEY="$WANDB_API_KEY" python ...`) and the value
travels to the job through its environment, so the stored command still runs the same way.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping

_SECRET_NAME = re.compile(r"(^WANDB_API_KEY$|^HF_TOKEN$|_TOKEN$|_KEY$|_SECRET$|PASSWORD)", re.IGNORECASE)
_INLINE_ASSIGNMENT = re.compile(r"""(?<![\w$])([A-Za-z_][A-Za-z0-9_]*)=('[^']*'|"[^"]*"|[^\s;&|]+)""")
# A secret of one or two characters would blank out every matching character of the text; such a
# value is no secret anyway, and the name-based rewrite of commands still applies to it.
_MIN_SECRET_LENGTH = 4
MASK = "***"


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


class Redactor:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.values = sorted(
            {v for k, v in environ.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LENGTH},
            key=len,
            reverse=True,  # longest first, so a secret containing another is masked whole
        )

    def text(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return text

    def command(self, command: str) -> tuple[str, dict[str, str]]:
        """The command safe to store, and the secret variables the job's environment must carry."""
        lifted: dict[str, str] = {}

        def lift(match: re.Match[str]) -> str:
            name, value = match[1], match[2]
            if not is_secret_name(name) or value == f'"${name}"':
                return match[0]
            lifted[name] = shlex.split(value)[0] if value.strip("'\"") else ""
            return f'{name}="${name}"'

        safe = _INLINE_ASSIGNMENT.sub(lift, command)
        lifted_values = {v for v in lifted.values() if len(v) >= _MIN_SECRET_LENGTH}
        self.values = sorted(set(self.values) | lifted_values, key=len, reverse=True)
        return self.text(safe), lifted


def referenced_secrets(command: str) -> list[str]:
    """The secret variables a stored command takes from the environment."""
    return re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="\$\1"', command)
