"""TensorBoard runs: folders of event files, read with tensorboard's own record reader.

A run is a folder holding `events.out.tfevents.*` files (a restarted writer adds a file; all are
read, in name order, which is the order they were started). Its scalars make the history, a column
per tag and a row per step, with `_runtime` the seconds since the run's first event so that wall
time works as an x-axis; histograms, images and text are not curves. Variant and seed come from the
folder's name: trl_ppo's `<exp_name>__<seed>__<time>`, or the user's pattern.

TensorBoard has no config of its own. One logged as hparams is used (torch's `add_hparams` writes
them to a sub-folder of the run, which is taken as the run's and not as a run), or one logged as a
text summary holding a JSON object or CleanRL's `|param|value|` table.

A damaged or truncated file keeps every event before the damage, with a warning, never an error.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat import tf
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.util.tensor_util import make_ndarray

from benchmark.report.runs import FINISHED, Found, Run, history_frame

EVENT_FILES = "events.out.tfevents.*"
# How trl_ppo names a TensorBoard run (PPOTrainer.init_tracker), as CleanRL does. The variant is
# greedy, so an exp name holding `__` stays whole.
TRL_RUN_NAME = r"(?P<variant>.+)__(?P<seed>\d+)__.+"
# A TFRecord frames each event with its length (8 bytes) and two CRCs (4 each): what the reader
# consumed, against the file's size, says whether it stopped before the end.
_FRAMING = 16
# tensorboard's reader (without TensorFlow) checks CRCs in pure Python, a few MB/s: past this many
# runs per core, reading them in parallel pays for starting the processes.
_RUNS_PER_WORKER = 4


def run_name_pattern(pattern: str) -> re.Pattern[str]:
    """The user's pattern, compiled; ValueError saying what is wrong with it."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"not a regular expression ({error})") from error
    if not {"variant", "seed"} <= set(compiled.groupindex):
        raise ValueError("needs the named groups (?P<variant>...) and (?P<seed>...)")
    return compiled


def find_run_folders(directory: Path) -> list[Path]:
    """Every folder under `directory`, itself included, that holds event files, in path order (absolute: the
    folder `.` has a name too)."""
    return sorted({path.parent.absolute() for path in directory.rglob(EVENT_FILES) if path.is_file()})


def read_runs(directory: Path, found: Found, pattern: str | None = None) -> None:
    """The runs under `directory` into `found`, the damage met and names not understood as warnings.

    `pattern` must match a run folder's whole name (`re.fullmatch`); where it does not, trl_ppo's
    naming is tried, and a name neither matches is the variant, without a seed.
    """
    folders = find_run_folders(directory)
    if not folders:
        found.warnings.append(f"{directory}: no folders holding TensorBoard event files ({EVENT_FILES})")
        return
    workers = min(os.cpu_count() or 1, len(folders) // _RUNS_PER_WORKER)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            logs = dict(zip(folders, pool.map(read_folder, folders), strict=True))
    else:
        logs = {folder: read_folder(folder) for folder in folders}
    merged: set[Path] = set()
    for folder, log in logs.items():
        found.warnings += log.damage
        parent = next((p for p in folder.parents if p in logs), None)
        if parent is not None and log.hparams:  # torch's add_hparams: the run's config, not a run
            logs[parent].hparams.update(log.hparams)
            merged.add(folder)
    names = [run_name_pattern(pattern)] if pattern else []
    names.append(re.compile(TRL_RUN_NAME))
    runs: list[Run] = []
    for folder, log in logs.items():
        if folder in merged:
            continue
        variant, seed = variant_and_seed(folder.name, names)
        if seed is None:
            found.warnings.append(
                f"{folder}: its name matches no run name pattern (<variant>__<seed>__<rest> or --run-name-pattern); "
                "taken as the variant, without a seed"
            )
        runs.append(log.run(folder, variant, seed))
    found.add(runs)


def variant_and_seed(name: str, patterns: list[re.Pattern[str]]) -> tuple[str, int | None]:
    """The variant and seed the first matching pattern finds in a folder's name; else the name and None."""
    for pattern in patterns:
        match = pattern.fullmatch(name)
        if match and re.fullmatch(r"-?\d+", match["seed"] or ""):
            return match["variant"], int(match["seed"])
    return name, None


@dataclass
class _Log:
    """What one folder's event files hold."""

    rows: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> tag -> its latest value
    wall_times: dict[int, float] = field(default_factory=dict)  # step -> when its latest scalar was written
    start: float | None = None  # when the first event was written
    hparams: dict[str, Any] = field(default_factory=dict)
    text_config: dict[str, Any] = field(default_factory=dict)
    damage: list[str] = field(default_factory=list)
    # The plugin of each tag: TensorFlow's writers name it in a tag's first value only.
    plugins: dict[str, str] = field(default_factory=dict)

    def add(self, event: Event) -> None:
        self.start = event.wall_time if self.start is None else min(self.start, event.wall_time)
        for value in event.summary.value:
            if plugin := value.metadata.plugin_data.plugin_name:
                self.plugins.setdefault(value.tag, plugin)
            plugin = self.plugins.get(value.tag, "")
            if value.HasField("simple_value"):  # torch's add_scalar by default, TF 1
                number = float(value.simple_value)
            elif plugin == "scalars" and value.HasField("tensor"):  # add_scalar(new_style=True), TF 2
                number = float(make_ndarray(value.tensor).item())
            else:
                self._add_config(value, plugin)
                continue
            # A step written twice (a restarted writer) keeps its latest value.
            self.rows.setdefault(event.step, {})[value.tag] = number
            self.wall_times[event.step] = max(event.wall_time, self.wall_times.get(event.step, event.wall_time))

    def _add_config(self, value: Summary.Value, plugin: str) -> None:
        if plugin == hparams_metadata.PLUGIN_NAME and value.tag == hparams_metadata.SESSION_START_INFO_TAG:
            self.hparams.update(_hparams(value.metadata.plugin_data.content))
        elif plugin == "text" and value.HasField("tensor") and len(value.tensor.string_val) == 1:
            self.text_config.update(_text_config(value.tensor.string_val[0].decode("utf-8", "replace")))

    def run(self, folder: Path, variant: str, seed: int | None) -> Run:
        start = self.start or 0.0
        rows = [
            {"_step": step, "_runtime": self.wall_times[step] - start, **values} for step, values in self.rows.items()
        ]
        return Run(
            # The absolute path: two folders given may hold runs of the same relative path.
            id=str(folder.resolve()),
            name=folder.name,
            state=FINISHED,
            config={**self.text_config, **self.hparams},
            summary={},
            history=history_frame(rows),
            group=variant,
            source=str(folder),
            variant=variant,
            seed=seed,
        )


def read_folder(folder: Path) -> _Log:
    """The events of a folder's event files, oldest file first."""
    log = _Log()
    for path in sorted(folder.glob(EVENT_FILES)):
        consumed = 0
        try:
            # The reader stops quietly at a torn or corrupt record, as if a live file had not grown yet.
            for record in RawEventFileLoader(str(path)).Load():
                log.add(Event.FromString(record))
                consumed += len(record) + _FRAMING
            damaged = consumed < path.stat().st_size
            reason = "truncated or corrupt"
        except (OSError, DecodeError, tf.errors.OpError) as error:
            damaged, reason = True, f"unreadable ({error})"
        if damaged:
            log.damage.append(f"{path}: {reason} at byte {consumed}; kept the events before it")
    return log


def _hparams(content: bytes) -> dict[str, Any]:
    data = HParamsPluginData.FromString(content)
    if data.WhichOneof("data") != "session_start_info":
        return {}
    values = {name: json_format.MessageToDict(value) for name, value in data.session_start_info.hparams.items()}
    # hparams keep every number as a double; a whole one was an int (a batch size, a seed).
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in values.items()}


def _text_config(text: str) -> dict[str, Any]:
    """A config logged as text: a JSON object, or CleanRL's `|param|value|` table (values as JSON where they
    parse, else as text); {} for any other text."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        lines = text.strip().splitlines()
        if not lines or lines[0].replace(" ", "") != "|param|value|":
            return {}
        cells = [line.strip().strip("|").split("|", 1) for line in lines[2:]]
        return {cell[0].strip(): _json_or_text(cell[1].strip()) for cell in cells if len(cell) == 2}
    return parsed if isinstance(parsed, dict) else {}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
