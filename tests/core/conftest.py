from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """Each test runs the CLI in a folder of its own."""
    return tmp_path
