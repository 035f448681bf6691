"""Fixtures shared by the test folders: the offline stand-ins for the hub models, built once.

huggingface_hub and datasets read the variables below when first imported, so they are set before
any import: no hub access at all, and empty caches, so that nothing comes from a model a developer
happened to download once. Subprocesses (jobs the harness starts) inherit them.
"""

import hashlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CACHES = {var: tempfile.mkdtemp(prefix="trl_ppo_") for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE")}
os.environ.update(
    HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **CACHES
)

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def remove_caches() -> Iterator[None]:
    """The temporary caches go afterwards (datasets keeps a copy of the reviews there)."""
    yield
    for folder in CACHES.values():
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def assets(request: pytest.FixtureRequest) -> Path:
    """The stand-ins, built by `python -m trl_ppo.offline_assets`'s code into the pytest cache.

    Keyed by the builder's source, so a changed builder rebuilds; a fresh checkout (CI) builds once.
    """
    from trl_ppo import offline_assets

    key = hashlib.sha256(inspect.getsource(offline_assets).encode()).hexdigest()[:16]
    folder = Path(request.config.cache.mkdir("trl_ppo_assets")) / key
    if not (folder / "complete").exists():
        offline_assets.build(offline_assets.Args(out_dir=folder))
        (folder / "complete").touch()
    return folder
