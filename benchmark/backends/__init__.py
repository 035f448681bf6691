"""Backends run the jobs of a manifest. They share one small interface and the manifest's records.

A backend's settings live in the manifest's plan (`plan[backend.name]`), so `resume` and `status`
in a later process act exactly as the launch did.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from benchmark.manifest import JobRecord, Manifest


class BackendError(RuntimeError):
    """A cluster command that failed; the message carries the cluster's own words."""


class Backend(ABC):
    name: str

    @abstractmethod
    def describe(self, run_dir: Path, plan: dict[str, Any], records: list[JobRecord]) -> str:
        """What `launch` would do, for `--dry-run`: nothing is started or written."""

    @abstractmethod
    def launch(self, manifest: Manifest, ids: list[str]) -> int:
        """Run or submit these jobs, keeping their records current; the CLI's exit code."""

    @abstractmethod
    def refresh(self, manifest: Manifest) -> str | None:
        """Bring the records in memory up to date with reality; a note for the user, if any."""

    @abstractmethod
    def cancel(self, manifest: Manifest) -> int:
        """Stop every job of the run that is still pending or running; the CLI's exit code."""


def get_backend(name: str) -> Backend:
    if name == "local":
        from benchmark.backends.local import LocalBackend

        return LocalBackend()
    if name == "slurm":
        from benchmark.backends.slurm import SlurmBackend

        return SlurmBackend()
    if name == "submitit":
        from benchmark.backends.submitit import SubmititBackend

        return SubmititBackend()
    raise ValueError(f"unknown backend {name!r}")
