"""Offline runs: wandb's own `.wandb` transaction logs, decoded with wandb's own protobuf.

An offline run keeps its config and summary nowhere else, and wandb >= 0.30 has no Python reader
for them any more, so this walks the file format itself. The format (as wandb 0.31 writes it): a
7-byte header `:W&B` + `<H 0xBEE1>` + `<B 0>`, then LevelDB-log blocks of 32 KiB counted from the
start of the file. Each chunk is `<I crc><H length><B type>` + data, type FULL, or FIRST, MIDDLE...,
LAST for a record split across blocks; a block's tail shorter than a chunk header is zero padding.
Each whole record is a `wandb_internal_pb2.Record`. The records, joined, parse as one message of a
stand-in type that keeps each kind's payloads apart and serialized; those a report reads are then
decoded with wandb's own types (history column-wise, see history_decode).

A run killed mid-write leaves a torn or garbled tail: every record before the damage is kept and
the damage is reported with file and byte offset, never raised, so one bad run cannot stop a report.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

from benchmark.report.history_decode import BYTES, decode_history, stand_in_types
from benchmark.report.runs import CRASHED, FAILED, FINISHED, RUNNING, Found, Run

_GAME_LOG = re.compile(r"game_log_(\d+)_[0-9a-f]+\.table\.json")
_MAGIC = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_KINDS = ("history", "summary", "run", "config", "environment", "exit")
# A stand-in for `Record` that sorts the payloads of the records a report reads by kind, left
# serialized: the records of a file, joined, are parsed in one C call (see history_decode).
_Index = stand_in_types(
    "record",
    {"Index": {kind: (pb.Record.DESCRIPTOR.fields_by_name[kind].number, BYTES) for kind in _KINDS}},
)["Index"]
# The CRC of each chunk starts from the CRC of its type byte (as in LevelDB, but unmasked).
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}

# Below this many runs per core, starting reader processes costs more than it saves.
_RUNS_PER_WORKER = 4
# A run whose file has no exit record and has not been written for this long is taken as dead:
# wandb writes at least a stats record every few seconds while the process lives.
STALE_AFTER_S = 600.0


@dataclass
class Damage:
    """Where a file stops making sense; everything before `offset` was used."""

    path: Path
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} at byte {self.offset}; kept the records before it"


@dataclass
class _Log:
    bodies: list[bytes] = field(default_factory=list)  # serialized `Record`s, in order
    damage: Damage | None = None


def read_records(path: Path) -> _Log:
    """Every intact record of a `.wandb` file, still serialized, and where the file is damaged."""
    data = path.read_bytes()
    log = _Log()
    if not data.startswith(_MAGIC):
        log.damage = Damage(path, 0, "not a wandb transaction log (bad header)")
        return log
    # Locals rather than globals and attribute look-ups: this loop runs once per record.
    end, header, unpack, crc32, bodies = len(data), _CHUNK_HEADER.size, _CHUNK_HEADER.unpack_from, zlib.crc32, []
    pending: bytearray | None = None  # the pieces of a record split across blocks, while in one
    record_start = pos = len(_MAGIC)
    while pos < end:
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < header:
            pos += left_in_block
            continue
        if pos + header > end:
            log.damage = Damage(path, record_start, "file ends inside a chunk header")
            break
        crc, length, kind = unpack(data, pos)
        body_start = pos + header
        pos = body_start + length
        if kind not in _TYPE_CRC or length > left_in_block - header:
            log.damage = Damage(path, record_start, f"bad chunk header (type {kind}, length {length})")
            break
        if pos > end:
            log.damage = Damage(path, record_start, "file ends inside a record")
            break
        body = data[body_start:pos]
        if crc32(body, _TYPE_CRC[kind]) != crc:
            log.damage = Damage(path, record_start, "checksum mismatch")
            break
        if kind == _FULL and pending is None:  # nearly every record
            bodies.append(body)
            record_start = pos
            continue
        if (kind == _FIRST) != (pending is None):
            log.damage = Damage(path, record_start, "pieces of a split record out of order")
            break
        if kind == _FIRST:
            pending = bytearray(body)
        elif kind == _MIDDLE:
            pending += body
        else:
            bodies.append(bytes(pending + body))
            pending = None
            record_start = pos
    log.bodies = bodies
    return log


def read_index(path: Path) -> tuple[Any, Damage | None]:
    """The payloads of a file's records by kind (`_Index`), each list in file order, and the damage."""
    log = read_records(path)
    return _Index.FromString(b"".join(log.bodies)), log.damage


def read_run(path: Path) -> tuple[Run, Damage | None]:
    """One offline run from its `.wandb` file (or the `offline-run-*` folder holding it)."""
    if path.is_dir():
        path = _run_file(path)
    index, damage = read_index(path)
    config: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    # wandb writes the run record first (one per file, a resumed run starts a new file); config
    # records update its config afterwards.
    for body in index.run:
        run_record = pb.RunRecord.FromString(body)
        meta = _run_meta(run_record)
        _apply_items(config, run_record.config)
    for body in index.config:
        _apply_items(config, pb.ConfigRecord.FromString(body))
    provenance: dict[str, Any] = {}
    for body in index.environment:
        environment = pb.EnvironmentRecord.FromString(body)
        if environment.gpu_count:
            meta["gpu_count"] = environment.gpu_count
        provenance |= _environment(environment)
    if libraries := _libraries(path.parent / "files" / "requirements.txt"):
        provenance["libraries"] = libraries
    if samples := _game_samples(path):
        provenance["samples"] = samples
    exit_code = pb.RunExitRecord.FromString(index.exit[-1]).exit_code if index.exit else None
    config.pop("_wandb", None)  # wandb's own bookkeeping, not the user's config
    run = Run(
        id=meta.get("id") or file_id(path),
        name=meta.get("name") or path.parent.name,
        state=_state(exit_code, damage, path),
        config=config,
        summary=LazySummary(path),
        history=decode_history(index.history),
        source=str(path),
        meta=provenance,
        **{k: v for k, v in meta.items() if k not in ("id", "name")},
    )
    return run, damage


class LazySummary(Mapping[str, Any]):
    """A run's summary, decoded from its file on first use.

    wandb writes two summary records per logged step (a copy of the row and the runtime), twice as
    many as history records; decoding them doubles the reading time, and a report needs only
    `_runtime`, which the history holds too. Holding the path, not the bytes, keeps it picklable
    and small.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._data: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._data is None:
            self._data = {}
            index, _ = read_index(self._path)
            for body in index.run:
                _apply_items(self._data, pb.RunRecord.FromString(body).summary)
            for body in index.summary:
                _apply_items(self._data, pb.SummaryRecord.FromString(body))
            self._data.pop("_wandb", None)
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())


def find_run_files(directory: Path) -> list[Path]:
    """The `.wandb` files under a wandb dir, its parent, or one run folder, oldest first.

    `latest-run` is a symlink to a folder already listed, so it is skipped to not count a run twice.
    """
    if directory.is_file():
        return [directory]
    candidates = [directory, directory / "wandb"]
    files: list[Path] = []
    for base in candidates:
        if not base.is_dir():
            continue
        files += sorted(base.glob("run-*.wandb"))
        files += sorted(
            f for d in base.glob("*run-*") if d.is_dir() and not d.is_symlink() for f in d.glob("run-*.wandb")
        )
    return files


def file_id(path: Path) -> str:
    """The W&B run id a `run-<id>.wandb` file is named after."""
    return path.stem.removeprefix("run-")


def read_runs(files: list[Path], found: Found, advance: Callable[[], object] | None = None) -> None:
    """Decode `files` into `found`, their damage as warnings; `advance` is called once per run read (a
    progress bar). Decoding is CPU-bound Python, so runs are read by one process per core when there are
    enough of them."""
    workers = min(os.cpu_count() or 1, len(files) // _RUNS_PER_WORKER)
    results = []
    with ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")))
            decoded: Iterable[tuple[Run, Damage | None]] = pool.map(read_run, files)
        else:
            decoded = map(read_run, files)
        for result in decoded:
            results.append(result)
            if advance is not None:
                advance()
    found.warnings += [str(damage) for _, damage in results if damage is not None]
    found.add([run for run, _ in results])


def _run_file(folder: Path) -> Path:
    files = sorted(folder.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no run-*.wandb file")
    return files[0]


def _apply_items(target: dict[str, Any], change: pb.ConfigRecord | pb.SummaryRecord) -> None:
    """A config or summary record: values are JSON, keys either flat or a path into nested dicts."""
    for item in change.update:
        *parents, last = list(item.nested_key) or [item.key]
        node = target
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = json.loads(item.value_json)
    for item in change.remove:
        *parents, last = list(item.nested_key) or [item.key]
        node = target
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)


def _run_meta(run: pb.RunRecord) -> dict[str, Any]:
    return {
        "id": run.run_id,
        "name": run.display_name,
        "project": run.project,
        "entity": run.entity,
        "group": run.run_group,
        "tags": list(run.tags),
    }


def _environment(record: pb.EnvironmentRecord) -> dict[str, Any]:
    """What W&B recorded of the machine and the command (a run writes several partial records)."""
    found: dict[str, Any] = {
        "host": record.host, "os": record.os, "python": record.python, "cpu": record.cpu.model,
        "gpu": record.gpu_type, "cuda": record.cuda_version, "commit": record.git.commit,
        "command": " ".join(["python", record.program, *record.args]) if record.program else "",
    }
    if record.HasField("started_at"):
        found["started"] = record.started_at.ToDatetime().isoformat(timespec="seconds") + "Z"
    if record.gpu_count:
        found["gpu"] = f"{record.gpu_count} x {record.gpu_type}" if record.gpu_type else f"{record.gpu_count} GPU(s)"
    return {k: v for k, v in found.items() if v}


# The libraries a report names in its provenance, of the many in a run's requirements.txt.
LIBRARIES = ("torch", "transformers", "trl", "trl-benchmark", "peft", "accelerate", "wandb")


def _libraries(requirements: Path) -> dict[str, str]:
    """name -> version of LIBRARIES, from the `pip freeze` W&B saves beside a run (absent: {})."""
    try:
        lines = requirements.read_text().splitlines()
    except OSError:
        return {}
    pinned = dict(line.split("==", 1) for line in lines if "==" in line)
    return {name: pinned[name] for name in LIBRARIES if name in pinned}


def _game_samples(path: Path, count: int = 3) -> list[tuple[str, str, float]]:
    """The first `count` rows (query, response, reward) of the last game log the run saved beside its file (W&B
    names each table file after its step): a few generations for the page, since RL-tuning users read outputs."""
    media = path.parent / "files" / "media" / "table"
    try:
        logs = [(int(m.group(1)), p) for p in media.iterdir() if (m := _GAME_LOG.fullmatch(p.name))]
    except OSError:
        return []
    if not logs:
        return []
    try:
        table = json.loads(max(logs)[1].read_text())
        columns = table["columns"]
        want = [columns.index(c) for c in ("query", "response", "reward")]
    except (OSError, ValueError, KeyError):
        return []
    return [(str(row[want[0]]), str(row[want[1]]), float(row[want[2]])) for row in table["data"][:count]]


def _state(exit_code: int | None, damage: Damage | None, path: Path) -> str:
    if exit_code is not None:
        return FINISHED if exit_code == 0 else FAILED
    if damage is not None or time.time() - path.stat().st_mtime > STALE_AFTER_S:
        return CRASHED
    return RUNNING
