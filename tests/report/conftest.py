"""A small sweep of real offline runs, written by the real `wandb` library, shared by the tests.

Variants follow TRL's benchmark: the baseline, step-level grad accumulation, a bigger model, and
PEFT, with classic TRL's metric names and config key. One more baseline seed fails (exit code 1),
one grad-accum seed is cut mid-file as if killed while writing, and one gpt2-xl seed never logs
the KL. Every logged number is kept, so tests compare against what was logged, not what was read.

Also here: `CloudStandIn`, the W&B server's GraphQL endpoint serving the same runs, for the cloud
path (`wandb.Api` -> wandb-core -> HTTP).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import wandb

BASE_MODEL = "lvwerra/gpt2-imdb"
VARIANTS: dict[str, dict[str, Any]] = {
    "sentiment_tuning": {"model_name": BASE_MODEL},
    "sentiment_tuning_step_grad_accu": {
        "model_name": BASE_MODEL,
        "mini_batch_size": 1,
        "gradient_accumulation_steps": 128,
    },
    "sentiment_tuning_gpt2xl_grad_accu": {
        "model_name": "gpt2-xl",
        "mini_batch_size": 16,
        "gradient_accumulation_steps": 8,
    },
    # Classic TRL logs no `use_peft`: the exp name is all that tells PEFT runs apart.
    "sentiment_tuning_peft": {"model_name": BASE_MODEL},
}
SEEDS = (1, 2)
STEPS = 40
BATCH_SIZE = 16
FAILED = ("sentiment_tuning", 3)
TRUNCATED = ("sentiment_tuning_step_grad_accu", 3)
NO_KL = ("sentiment_tuning_gpt2xl_grad_accu", 2)
OUR_WORKLOAD = "sentiment_tuning_peft"
# Bytes kept of the truncated run's file: past several 32 KiB blocks, inside some record.
TRUNCATE_AT = 100_000


@dataclass
class LoggedRun:
    variant: str
    seed: int
    name: str
    file: Path
    rows: list[dict[str, float]] = field(default_factory=list)  # numbers as passed to wandb.log
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sweep:
    """What the tests get: the folder, every run as logged, and which runs are the odd ones
    (tests cannot import conftest under --import-mode=importlib, so they come through here)."""

    wandb_dir: Path  # WANDB_DIR: runs are under wandb_dir/"wandb"
    runs: dict[tuple[str, int], LoggedRun]
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: tuple[int, ...] = SEEDS
    failed: tuple[str, int] = FAILED
    truncated: tuple[str, int] = TRUNCATED
    no_kl: tuple[str, int] = NO_KL
    truncate_at: int = TRUNCATE_AT


def trl_config(variant: str, seed: int) -> dict[str, Any]:
    ppo = {"exp_name": variant, "seed": seed, "batch_size": BATCH_SIZE, "learning_rate": 1.41e-5}
    return {"trl_ppo_trainer_config": ppo | VARIANTS[variant]}


def metrics(variant: str, seed: int, step: int, rng: random.Random) -> dict[str, float]:
    """A rising reward whose level depends on the variant, noisy per seed."""
    offset = list(VARIANTS).index(variant) * 0.5
    return {
        "env/reward_mean": offset + 0.05 * step + rng.gauss(0, 0.1),
        "env/reward_std": 1 + rng.random(),
        "objective/kl": 0.1 * step * (1 + 0.2 * seed) + rng.random() * 0.01,
        "objective/kl_coef": 0.2 * math.exp(-step / 100),
        "ppo/loss/total": rng.gauss(0, 1),
    }


def write_run(variant: str, seed: int, *, exit_code: int = 0, steps: int = STEPS) -> LoggedRun:
    """One run through the real wandb (WANDB_MODE=offline must be set), kept as logged."""
    name = f"{variant}-s{seed}"
    logged = LoggedRun(variant, seed, name, Path(), config=trl_config(variant, seed))
    rng = random.Random(f"{variant}/{seed}")
    run = wandb.init(project="trl", name=name, group="sweep", tags=["report-test"], config=logged.config)
    for step in range(steps):
        row = metrics(variant, seed, step, rng)
        if (variant, seed) == NO_KL:
            del row["objective/kl"]
        if variant == OUR_WORKLOAD:  # it also logs its throughput per step
            row["perf/samples_per_s"] = 100 + 10 * rng.random()
        logged.rows.append(row)
        # Classic TRL also logs histograms and text: they must be read past, not plotted.
        run.log({**row, "env/reward_dist": wandb.Histogram([row["env/reward_mean"], 0.0, 1.0]), "note": "x"})
    logged.file = Path(run.dir).parent / f"run-{run.id}.wandb"
    run.finish(exit_code=exit_code)
    return logged


@contextmanager
def offline_wandb(wandb_dir: Path) -> Iterator[None]:
    """WANDB_MODE=offline into `wandb_dir` while inside; after, wandb torn down (its files complete)
    and the environment as it was, so that no other test sees these settings."""
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true")
    try:
        yield
    finally:
        # wandb-core may still be flushing after finish() returns; teardown waits for the files.
        wandb.teardown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    wandb_dir = tmp_path_factory.mktemp("wandb")
    with offline_wandb(wandb_dir):
        runs = {(v, s): write_run(v, s) for v in VARIANTS for s in SEEDS}
        runs[FAILED] = write_run(*FAILED, exit_code=1)
        runs[TRUNCATED] = write_run(*TRUNCATED)
    with open(runs[TRUNCATED].file, "r+b") as f:
        f.truncate(TRUNCATE_AT)
    return Sweep(wandb_dir, runs)


@pytest.fixture
def offline_dir(tmp_path: Path) -> Iterator[Path]:
    """A test's own WANDB_DIR, offline, for runs it writes itself."""
    with offline_wandb(tmp_path / "wandb-runs"):
        yield tmp_path / "wandb-runs"


class CloudStandIn(ThreadingHTTPServer):
    """The W&B server at the HTTP boundary, for `wandb.Api` (through wandb-core) to talk to.

    It answers the GraphQL operations wandb 0.31 sends to list runs and scan their history, in the
    server's own response shapes (config entries wrapped as `{"value": ...}`, config and summary as
    JSON text, history pages as one JSON text per row), and serves each run's `wandb-metadata.json`.
    With `parquet`, it also offers each run's history as the server's parquet export (one file per
    run, a column per key), which wandb reads instead of the row pages. Its runs are the sweep's.
    """

    def __init__(self, sweep: Sweep, parquet: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _CloudHandler)
        self.parquet = parquet
        self.runs = {f"cloud{i}": logged for i, logged in enumerate(sweep.runs.values()) if logged.variant in VARIANTS}
        self.operations: list[tuple[str, dict[str, Any]]] = []  # what wandb asked, in order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def rows(self, name: str) -> list[dict[str, float]]:
        """A run's history as the server holds it: logged rows plus wandb's `_step` and `_runtime`."""
        return [{"_step": i, "_runtime": 0.5 * i, **row} for i, row in enumerate(self.runs[name].rows)]

    def node(self, name: str) -> dict[str, Any]:
        logged = self.runs[name]
        return {
            "id": f"UnVuOnYxOn{name}", "name": name, "displayName": logged.name, "tags": ["report-test"],
            "sweepName": None, "state": "failed" if (logged.variant, logged.seed) == FAILED else "finished",
            "group": "sweep", "jobType": None, "commit": None,
            "readOnly": False, "createdAt": "2026-11-28T06:00:00", "heartbeatAt": "2026-11-28T07:00:00",
            "description": None, "notes": None, "historyLineCount": len(logged.rows),
            "config": json.dumps({k: {"value": v, "desc": None} for k, v in logged.config.items()}),
            "summaryMetrics": json.dumps({"_runtime": 0.5 * (len(logged.rows) - 1), **logged.rows[-1]}),
            "systemMetrics": "{}", "historyKeys": {"lastStep": len(logged.rows) - 1},
            "user": {"name": "tester", "username": "tester"},
        }  # fmt: skip

    def answer(self, operation: str, variables: dict[str, Any]) -> dict[str, Any]:
        if operation in ("Viewer", "GetDefaultEntity"):
            return {"viewer": {"id": "VXNlcjox", "entity": "lab", "username": "tester", "email": "t@example.com",
                               "flags": "{}", "teams": {"edges": []}}}  # fmt: skip
        if operation == "Runs":
            edges = [{"node": self.node(name), "cursor": name} for name in self.runs]
            page = {"endCursor": edges[-1]["cursor"], "hasNextPage": False}
            return {"project": {"internalId": "UHJvamVjdDox", "readOnly": False, "runCount": len(edges),
                                "runs": {"edges": edges, "pageInfo": page}}}  # fmt: skip
        run = variables.get("name") or variables.get("run") or variables.get("runName")
        if operation == "RunHistoryKeys":
            return {"project": {"run": {"historyKeys": self.node(run)["historyKeys"]}}}
        if operation == "RunParquetHistory":
            urls = [f"{self.url}/parquet/{run}.parquet"] if self.parquet else []
            return {"project": {"run": {"parquetHistory": {"parquetUrls": urls, "liveData": []}}}}
        if operation == "HistoryPage":
            rows = [r for r in self.rows(run) if variables["minStep"] <= r["_step"] < variables["maxStep"]]
            return {"project": {"run": {"history": [json.dumps(r) for r in rows[: variables["pageSize"]]]}}}
        if operation == "RunFiles":
            url = f"{self.url}/files/{run}/wandb-metadata.json"
            node = {"id": "RmlsZTox", "name": "wandb-metadata.json", "url": url, "directUrl": None,
                    "sizeBytes": len(self.metadata()), "mimetype": "application/json",
                    "updatedAt": "2026-11-28T07:00:00", "md5": None}  # fmt: skip
            files = {"edges": [{"node": node, "cursor": "f1"}], "pageInfo": {"endCursor": "f1", "hasNextPage": False}}
            return {"project": {"internalId": "UHJvamVjdDox", "run": {"fileCount": 1, "files": files}}}
        raise KeyError(f"the stand-in does not know the operation {operation}")

    @staticmethod
    def metadata() -> bytes:
        return json.dumps({"gpu_count": 2, "gpu": "NVIDIA H100 80GB HBM3"}).encode()

    def parquet_export(self, name: str) -> bytes:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self.rows(name)), sink)
        return sink.getvalue()


class _CloudHandler(BaseHTTPRequestHandler):
    server: CloudStandIn

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/graphql":  # wandb-core's telemetry
            return self._reply(b"{}")
        request = json.loads(body)
        named = re.search(r"(?:query|mutation)\s+(\w+)", request["query"])
        operation = request.get("operationName") or (named.group(1) if named else "")
        variables = request.get("variables") or {}
        self.server.operations.append((operation, variables))
        try:
            self._reply(json.dumps({"data": self.server.answer(operation, variables)}).encode())
        except KeyError as error:
            self._reply(json.dumps({"errors": [{"message": str(error)}]}).encode())

    def do_GET(self) -> None:  # noqa: N802
        self.server.operations.append(("GET", {"path": self.path}))
        if self.path.startswith("/parquet/"):
            return self._reply(self.server.parquet_export(self.path.removeprefix("/parquet/").removesuffix(".parquet")))
        self._reply(self.server.metadata() if self.path.endswith("/wandb-metadata.json") else b"", 200)

    def _reply(self, data: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def wandb_cloud(
    sweep: Sweep, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[CloudStandIn]:
    """The stand-in, running, with wandb pointed at it and online (parametrize indirectly with True
    for the parquet export)."""
    server = CloudStandIn(sweep, parquet=getattr(request, "param", False))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "online")
    # wandb-core keeps downloaded parquet histories in its cache dir, keyed by entity/project/run: a
    # shared cache would serve one test's (or one earlier session's) runs to the next.
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    try:
        yield server
    finally:
        wandb.teardown()  # wandb-core keeps the server's address: a later test needs a fresh one
        server.shutdown()
        server.server_close()
