"""Runs from the W&B cloud through `wandb.Api`, with full histories and an on-disk cache.

Histories come from `scan_history` (every logged row), never from the sampled `history()`. Each
run is cached under the user's cache dir (never inside site-packages), keyed by its id and its last
heartbeat and row count: a second report is served from disk, a run that changed is fetched again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.report.runs import Filters, Run, history_frame, numbers_only

# Fetching is network-bound: more parallel requests than cores pay off.
FETCH_WORKERS = 8


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trl-benchmark" / "wandb"


def server_filters(filters: Filters) -> dict[str, Any]:
    """The filters in W&B's MongoDB-like run query, so the server sends only matching runs.

    The server stores each config entry as `{"value": ...}`, hence `config.<top>.value.<rest>`.
    A value is matched both as typed and as JSON (`1` the number and `"1"` the text), as the local
    `Filters.keep` does.
    """
    clauses: list[dict[str, Any]] = [{"tags": {"$in": [tag]}} for tag in filters.tags]
    if filters.group:
        clauses.append({"group": filters.group})
    if filters.state:
        clauses.append({"state": filters.state})
    for key, value in filters.config.items():
        top, _, rest = key.partition(".")
        field = f"config.{top}.value" + (f".{rest}" if rest else "")
        try:
            candidates = [value, json.loads(value)]
        except json.JSONDecodeError:
            candidates = [value]
        clauses.append({field: {"$in": candidates}})
    return {"$and": clauses} if clauses else {}


def fetch_runs(entity: str, project: str, filters: Filters, cache_dir: Path, refresh: bool = False) -> list[Run]:
    """Every run of `entity/project` the filters select, histories complete, fetched in parallel."""
    import wandb  # deferred: creating the API client is only worth it when the cloud is asked for

    api = wandb.Api(timeout=60)
    listed = list(api.runs(f"{entity}/{project}", filters=server_filters(filters), lazy=False))
    cache = cache_dir / entity / project

    def load(api_run: Any) -> Run:
        version = f"{api_run.heartbeatAt}/{api_run.historyLineCount}"
        return cached(cache, api_run.id, version, lambda: _from_api(api_run, entity, project), refresh)

    with ThreadPoolExecutor(FETCH_WORKERS) as pool:
        return list(pool.map(load, listed))


def _from_api(api_run: Any, entity: str, project: str) -> Run:
    metadata = api_run.metadata or {}
    return Run(
        id=api_run.id,
        name=api_run.name,
        state=api_run.state,
        config={k: v for k, v in api_run.config.items() if not k.startswith("_")},
        summary=dict(api_run.summary_metrics),
        history=history_frame([numbers_only(row) for row in api_run.scan_history(page_size=10_000)]),
        project=project,
        entity=entity,
        group=api_run.group or "",
        tags=list(api_run.tags),
        # Set only when the server sent the run's user (openrlbenchmark's `user=` selects by it).
        user=getattr(getattr(api_run, "user", None), "username", None) or "",
        gpu_count=metadata.get("gpu_count"),
        source=api_run.url,
        meta=_provenance(metadata),
    )


def _provenance(metadata: dict[str, Any]) -> dict[str, Any]:
    """What W&B's run metadata says of the machine and the command, under the offline reader's names."""
    found = {
        "host": metadata.get("host"), "os": metadata.get("os"), "python": metadata.get("python"),
        "cpu": (metadata.get("cpu") or {}).get("model") if isinstance(metadata.get("cpu"), dict) else None,
        "gpu": f"{metadata['gpu_count']} x {metadata.get('gpu', 'GPU')}" if metadata.get("gpu_count") else None,
        "cuda": metadata.get("cuda"), "commit": (metadata.get("git") or {}).get("commit"),
        "started": metadata.get("startedAt"),
        "command": " ".join(["python", metadata["program"], *metadata.get("args", [])]) if metadata.get("program")
        else None,
    }
    return {k: v for k, v in found.items() if v}


def cached(cache: Path, run_id: str, version: str, fetch: Callable[[], Run], refresh: bool = False) -> Run:
    """The run from `cache` if it was stored at this `version`, else `fetch()` it and store it.

    A run is two files: `<id>.json` (everything but the history, and the version) and
    `<id>.parquet` (the history). The json is written last, so a fetch interrupted halfway leaves
    no entry that looks complete.
    """
    meta_path, history_path = cache / f"{run_id}.json", cache / f"{run_id}.parquet"
    if not refresh and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.pop("version") == version and history_path.is_file():
            return Run(**meta, history=pd.read_parquet(history_path))
    run = fetch()
    cache.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    run.history.to_parquet(history_path)
    meta = {f.name: getattr(run, f.name) for f in fields(run) if f.name != "history"}
    meta_path.write_text(json.dumps({**meta, "version": version}))
    return run
