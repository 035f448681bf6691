"""A run's history records -> one frame, decoded column by column instead of item by item.

A 10,000-step run with 10 metrics holds ~130,000 history items. Walking them as protobuf objects
costs a few microseconds each in Python (most of a second per run); here protobuf's C decoder does
the walking, and Python only sees whole lists:

1. All history records are parsed in one call as `RawLog`, a stand-in type that shares wandb's field
   numbers but keeps each record's items serialized (`bytes`): one list of items per row.
2. A plain metric item is `nested_key` once and `value_json`. All items, joined, parse in one call as
   `ItemColumns` (the same fields, repeated); when every item is plain, the lists of keys and JSON
   values are aligned, one entry per item.
3. Otherwise (classic TRL logs histograms, whose items have two-part keys), the plain items are
   picked out by their first bytes and joined alone; the rest are decoded with wandb's own
   `HistoryItem`, one by one; there are few of them.

Values are parsed as numbers in one vectorized pass; keys whose values never are (text, flags,
histogram parts) get no column.
"""

from __future__ import annotations

from itertools import chain, compress

import numpy as np
import pandas as pd
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from wandb.proto import wandb_internal_pb2 as pb

from benchmark.report.runs import sorted_by_step

_HISTORY = pb.Record.DESCRIPTOR.fields_by_name["history"].number
_ITEM = pb.HistoryRecord.DESCRIPTOR.fields_by_name["item"].number
_KEY = pb.HistoryItem.DESCRIPTOR.fields_by_name["key"].number
_NESTED_KEY = pb.HistoryItem.DESCRIPTOR.fields_by_name["nested_key"].number
_VALUE_JSON = pb.HistoryItem.DESCRIPTOR.fields_by_name["value_json"].number
# Tags of length-delimited fields (wire type 2), as they appear in the bytes.
_NESTED_KEY_TAG = (_NESTED_KEY << 3) | 2
_VALUE_JSON_TAG = bytes([((_VALUE_JSON << 3) | 2) & 0x7F | 0x80, ((_VALUE_JSON << 3) | 2) >> 7])


def _stand_in_types() -> tuple[type, type]:
    proto = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="benchmark_report_history.proto", package="benchmark_report")
    raw_history = file.message_type.add(name="RawHistory")
    raw_history.field.add(name="item", number=_ITEM, type=proto.TYPE_BYTES, label=proto.LABEL_REPEATED)
    raw_log = file.message_type.add(name="RawLog")
    raw_log.field.add(
        name="history",
        number=_HISTORY,
        type=proto.TYPE_MESSAGE,
        type_name=".benchmark_report.RawHistory",
        label=proto.LABEL_REPEATED,  # repeated: each record's history becomes one element
    )
    columns = file.message_type.add(name="ItemColumns")
    columns.field.add(name="key", number=_KEY, type=proto.TYPE_STRING, label=proto.LABEL_REPEATED)
    columns.field.add(name="nested_key", number=_NESTED_KEY, type=proto.TYPE_STRING, label=proto.LABEL_REPEATED)
    columns.field.add(name="value_json", number=_VALUE_JSON, type=proto.TYPE_STRING, label=proto.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"benchmark_report.{name}"))
        for name in ("RawLog", "ItemColumns")
    )


_RawLog, _ItemColumns = _stand_in_types()


def decode_history(bodies: list[bytes]) -> pd.DataFrame:
    """Serialized history `Record`s, in order -> a frame of their numeric values, one row each."""
    rows = _RawLog.FromString(b"".join(bodies)).history
    counts = np.fromiter((len(row.item) for row in rows), dtype=np.int64, count=len(rows))
    items = list(chain.from_iterable(row.item for row in rows))
    row_of = np.repeat(np.arange(len(rows)), counts)

    columns = _ItemColumns.FromString(b"".join(items))
    if not columns.key and len(columns.nested_key) == len(columns.value_json) == len(items):
        # Every item is a plain metric (one nested key each, no old-style `key`): lists are aligned.
        keys, values, where = list(columns.nested_key), list(columns.value_json), row_of
    else:
        keys, values, where = _mixed(items, row_of)

    numbers, numeric = _as_numbers(values)
    codes, names = pd.factorize(np.asarray(keys, dtype=object))
    frame = {}
    for code, name in enumerate(names):
        chosen = (codes == code) & numeric
        if chosen.any():
            column = np.full(len(rows), np.nan)
            column[where[chosen]] = numbers[chosen]
            frame[name] = column
    return sorted_by_step(pd.DataFrame(frame))


def _as_numbers(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """JSON values -> floats, and which of them are numbers at all (text, lists and flags are not)."""
    try:  # when every value is a number, numpy's own parser is twice as fast as pandas'
        numbers = np.array(values, dtype=float)
        return numbers, np.ones(len(numbers), dtype=bool)
    except ValueError:
        texts = np.asarray(values, dtype=object)
        numbers = pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce").to_numpy(dtype=float)
        return numbers, ~np.isnan(numbers) | (texts == "NaN")  # JSON's NaN is a number that was logged


def _mixed(items: list[bytes], row_of: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
    """Keys, JSON values and rows of items when not all are plain metrics (classic TRL logs
    histograms every step): plain ones still in one parse, the others one by one."""
    plain = np.fromiter((_is_plain(item) for item in items), dtype=bool, count=len(items))
    columns = _ItemColumns.FromString(b"".join(compress(items, plain)))
    keys, values = list(columns.nested_key), list(columns.value_json)
    if not len(keys) == len(values) == plain.sum():  # bytes not as expected: decode every item
        plain[:] = False
        keys, values = [], []
    for index in np.flatnonzero(~plain):
        item = pb.HistoryItem.FromString(items[index])
        keys.append(item.key or ".".join(item.nested_key))
        values.append(item.value_json)
    return keys, values, np.concatenate([row_of[plain], row_of[~plain]])


def _is_plain(item: bytes) -> bool:
    """`nested_key` once (one length byte), directly followed by `value_json`: a plain metric."""
    return (
        len(item) > 2
        and item[0] == _NESTED_KEY_TAG
        and item[1] < 0x80
        and item[2 + item[1] : 4 + item[1]] == _VALUE_JSON_TAG
    )
