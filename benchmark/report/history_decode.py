"""A run's history records -> one frame, decoded column by column instead of item by item.

A 10,000-step run with 10 metrics holds ~130,000 history items. Walking them as protobuf objects
costs a few microseconds each in Python (most of a second per run); here protobuf's C decoder does
the walking, and Python only sees whole lists. Serialized messages, concatenated, parse as one
message whose repeated fields hold every occurrence in order, and whose singular message fields
merge every occurrence into one. So, with stand-in types that share wandb's field numbers:

1. The `HistoryRecord`s are joined, each followed by a marker item that ends its row.
2. Parsed as `AllItems`, whose one `item` message gathers the fields of every item: when every item
   is a plain metric (`nested_key` once and `value_json`), the lists of keys and JSON values are
   aligned, one entry per item, in one C call.
3. Otherwise (classic TRL logs histograms, whose items have two-part keys), the items are parsed as
   `RawItems`, each kept serialized: plain ones are picked out by their first bytes and parsed
   together as above, the rest decoded with wandb's own `HistoryItem`, one by one; there are few.

Keys and values go from protobuf's lists to Arrow as bytes (no Python string per item); Arrow
dictionary-encodes the keys and parses the values as numbers in one vectorized pass; keys whose
values never are numbers (text, flags, histogram parts) get no column.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress

import numpy as np
import pandas as pd
import pyarrow as pa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from wandb.proto import wandb_internal_pb2 as pb

from benchmark.report.runs import sorted_by_step

_PROTO = descriptor_pb2.FieldDescriptorProto
BYTES = _PROTO.TYPE_BYTES
_ITEM = pb.HistoryRecord.DESCRIPTOR.fields_by_name["item"].number
_ITEM_FIELDS = {
    name: pb.HistoryItem.DESCRIPTOR.fields_by_name[name].number for name in ["key", "nested_key", "value_json"]
}
_NESTED_KEY, _VALUE_JSON = _ITEM_FIELDS["nested_key"], _ITEM_FIELDS["value_json"]
# Tags of length-delimited fields (wire type 2), as they appear in the bytes.
_NESTED_KEY_TAG = (_NESTED_KEY << 3) | 2
_VALUE_JSON_TAG = bytes([((_VALUE_JSON << 3) | 2) & 0x7F | 0x80, ((_VALUE_JSON << 3) | 2) >> 7])
# No metric is named so: the item that ends each row in the joined history.
_ROW_END_KEY = "\x00end of row"
_ROW_END = pb.HistoryRecord(item=[pb.HistoryItem(nested_key=[_ROW_END_KEY], value_json="0")]).SerializeToString()


def stand_in_types(name: str, messages: dict[str, dict[str, tuple[int, int | str]]]) -> dict[str, type[Message]]:
    """Message types made at run time: {message: {field: (number, type)}}, the type a scalar one
    (such as `BYTES`) or the name of a message declared before it. A scalar field is repeated; a
    message field is singular, so that all its occurrences merge into one message."""
    package = f"benchmark_report_{name}"
    file = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package)
    for message, fields in messages.items():
        declared = file.message_type.add(name=message)
        for field, (number, kind) in fields.items():
            if isinstance(kind, str):
                declared.field.add(name=field, number=number, type=_PROTO.TYPE_MESSAGE, type_name=f".{package}.{kind}")
            else:
                declared.field.add(name=field, number=number, type=kind, label=_PROTO.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {m: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{m}")) for m in messages}


_TYPES = stand_in_types(
    "history",
    {
        "ItemColumns": {field: (number, BYTES) for field, number in _ITEM_FIELDS.items()},
        "AllItems": {"item": (_ITEM, "ItemColumns")},
        "RawItems": {"item": (_ITEM, BYTES)},
    },
)


def decode_history(records: Sequence[bytes]) -> pd.DataFrame:
    """Serialized `HistoryRecord`s, in order -> a frame of their numeric values, one row each."""
    if not records:
        return sorted_by_step(pd.DataFrame())
    joined = _ROW_END.join([*records, b""])
    # Arrow takes the bytes straight from protobuf's lists, without a Python string per item.
    keys, values = (pa.array(column, type=pa.binary()) for column in _plain_items(joined) or _any_items(joined))
    encoded = keys.dictionary_encode()
    codes, names = encoded.indices.to_numpy(), [name.decode() for name in encoded.dictionary.to_pylist()]
    row_end = codes == names.index(_ROW_END_KEY)
    row = np.cumsum(row_end)  # an item's row: how many rows ended before it (the markers are left out below)
    numbers, numeric = _as_numbers(values)
    numeric &= ~row_end
    table = np.full((len(records), len(names)), np.nan)
    table[row[numeric], codes[numeric]] = numbers[numeric]
    logged = np.bincount(codes[numeric], minlength=len(names)) > 0  # keys never numeric get no column
    return sorted_by_step(pd.DataFrame(table[:, logged], columns=list(compress(names, logged))))


def _plain_items(joined: bytes) -> tuple[Sequence[bytes], Sequence[bytes]] | None:
    """Keys and JSON values of the items, or None unless every item is a plain metric.

    Every item has one `value_json` (JSON text is never empty) and, lacking an old-style `key`, at
    least one `nested_key`: as many keys as values means one each, so the two lists align.
    """
    items = _TYPES["AllItems"].FromString(joined).item
    if items.key or len(items.nested_key) != len(items.value_json):
        return None
    return items.nested_key, items.value_json


def _any_items(joined: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Keys and JSON values of the items when not all are plain metrics."""
    items = _TYPES["RawItems"].FromString(joined).item
    plain = np.fromiter(map(_is_plain, items), dtype=bool, count=len(items))
    keys, values = np.empty(len(items), dtype=object), np.empty(len(items), dtype=object)
    columns = _TYPES["ItemColumns"].FromString(b"".join(compress(items, plain)))
    if len(columns.nested_key) == len(columns.value_json) == plain.sum():
        keys[plain], values[plain] = np.asarray(columns.nested_key, object), np.asarray(columns.value_json, object)
    else:  # bytes not as expected: decode every item
        plain[:] = False
    for index in np.flatnonzero(~plain):
        item = pb.HistoryItem.FromString(items[index])
        keys[index] = (item.key or ".".join(item.nested_key)).encode()
        values[index] = item.value_json.encode()
    return keys, values


def _as_numbers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """JSON values -> floats, and which of them are numbers at all (text, lists and flags are not)."""
    try:  # Arrow's parser takes every JSON number (NaN and Infinity too) and nothing else, 3x numpy's speed
        numbers = values.cast(pa.float64()).to_numpy()
        return numbers, np.ones(len(numbers), dtype=bool)
    except pa.ArrowInvalid:
        texts = values.cast(pa.string()).to_numpy(zero_copy_only=False)
        numbers = pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce").to_numpy(dtype=float)
        return numbers, ~np.isnan(numbers) | (texts == "NaN")  # JSON's NaN is a number that was logged


def _is_plain(item: bytes) -> bool:
    """`nested_key` once (one length byte), directly followed by `value_json`: a plain metric."""
    return (
        len(item) > 2
        and item[0] == _NESTED_KEY_TAG
        and item[1] < 0x80
        and item[2 + item[1] : 4 + item[1]] == _VALUE_JSON_TAG
    )
