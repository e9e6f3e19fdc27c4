"""JSON values <-> numpy arrays, typed by the signature (TF Serving's REST conventions).

Numbers are checked against the input's dtype (no silent truncation of 1.5 to an int, no
wrap-around of 300 into uint8); strings are UTF-8 text or {"b64": "..."} for binary; outputs
whose alias ends in "_bytes", or that are not UTF-8, come back as {"b64": "..."}.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from deeprec_runtime.codec import MAX_RANK, STRING_OVERHEAD_BYTES, DecodeBudget, element_count
from deeprec_runtime.errors import InvalidArgument
from deeprec_runtime.model.signature import TensorSpec

B64 = "b64"


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and B64 in value


def _b64decode(value: Any, name: str) -> bytes:
    text = value[B64]
    if not isinstance(text, str):
        raise InvalidArgument(f"input '{name}': b64 value must be a string")
    try:
        padded = text + "=" * (-len(text) % 4)
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"input '{name}': invalid base64 in b64 value") from None


def _to_bytes(value: Any, name: str, budget: DecodeBudget | None, depth: int, rank: int) -> Any:
    """Strings of nested lists as bytes, each charged to `budget`; lists nested deeper than
    `rank` (the shape read along the first elements) are ragged, refused before recursing on."""
    if isinstance(value, list):
        if depth >= rank:
            raise InvalidArgument(f"input '{name}': not a regular (rectangular) array of values: "
                                  f"lists nested deeper than its {rank} dimensions")
        return [_to_bytes(v, name, budget, depth + 1, rank) for v in value]
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif is_b64(value):
        data = _b64decode(value, name)
    else:
        raise InvalidArgument(f"input '{name}' holds strings; got {type(value).__name__} "
                              f"{str(value)[:40]!r}")
    if budget is not None:
        budget.charge(name, len(data) + STRING_OVERHEAD_BYTES)
    return data


def json_shape(value: Any, name: str) -> list[int]:
    """The shape nested lists claim, read along their first elements (np.asarray refuses ragged
    ones later, before allocating); InvalidArgument past TensorFlow's rank limit, found without
    recursing."""
    dims: list[int] = []
    while isinstance(value, list):
        if len(dims) == MAX_RANK:
            raise InvalidArgument(f"input '{name}': lists nested more than {MAX_RANK} deep; "
                                  f"TensorFlow allows at most {MAX_RANK} dimensions")
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return dims


def to_array(value: Any, spec: TensorSpec, name: str,
             budget: DecodeBudget | None = None) -> np.ndarray:
    """A JSON value (nested lists) -> an array of the input's dtype; InvalidArgument naming the
    input when the value does not fit, or when it would take more than `budget` allows (checked
    before the array is allocated)."""
    target = np.dtype(spec.dtype.as_numpy_dtype) if spec.dtype.is_numpy_compatible else None
    dims = json_shape(value, name)
    count = element_count(dims, name)
    if budget is not None and target is not None and spec.dtype.name != "string":
        budget.charge(name, count * target.itemsize)
    try:
        if spec.dtype.name == "string":
            data = _to_bytes(value, name, budget, 0, len(dims))
            out = np.empty(0, dtype=object) if data == [] else np.array(data, dtype=object)
            if out.dtype != object or any(not isinstance(x, bytes) for x in out.reshape(-1)):
                raise InvalidArgument(f"input '{name}': ragged or mixed string lists")
            return out
        raw = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(f"input '{name}': not a regular (rectangular) array of values: "
                              f"{str(exc).splitlines()[0][:120]}") from None
    if target is None:
        raise InvalidArgument(f"input '{name}': dtype {spec.dtype.name} cannot be sent as JSON")
    kind = raw.dtype.kind
    if raw.size == 0:
        return raw.astype(target)
    if target.kind == "b":
        if kind != "b":
            raise InvalidArgument(f"input '{name}' is {spec.dtype.name}: expected true/false values")
        return raw
    if kind not in "iuf":
        raise InvalidArgument(f"input '{name}' is {spec.dtype.name}: expected numbers, got "
                              f"{'booleans' if kind == 'b' else 'non-numeric values'}")
    if target.kind in "iu":
        if kind == "f":
            raise InvalidArgument(f"input '{name}' is {spec.dtype.name}: expected integers, got "
                                  "decimal numbers")
        info = np.iinfo(target)
        if raw.min() < info.min or raw.max() > info.max:
            raise InvalidArgument(f"input '{name}': values out of range for {spec.dtype.name} "
                                  f"[{info.min}, {info.max}]")
    return raw.astype(target)


def _string_out(value: bytes, binary: bool) -> Any:
    if not binary:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {B64: base64.b64encode(value).decode("ascii")}


def to_json(array: np.ndarray, alias: str) -> Any:
    """An output array -> JSON-ready nested lists."""
    if array.dtype == object or array.dtype.kind in "SU":
        binary = alias.endswith("_bytes")
        flat = [_string_out(v if isinstance(v, bytes) else str(v).encode(), binary)
                for v in array.reshape(-1)]
        if array.ndim == 0:
            return flat[0]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape).tolist()
    if array.dtype.kind == "c":
        return np.stack([array.real, array.imag], axis=-1).tolist()
    if array.dtype in (np.float32, np.float16):
        # tolist() widens to double and JSON would print 0.1f as 0.10000000149011612; numpy's
        # str() is the shortest text that reads back as the same float32, as TF Serving prints.
        if array.ndim == 0:
            return float(str(array))
        return np.array([float(v) for v in array.astype(str).reshape(-1)],
                        dtype=object).reshape(array.shape).tolist()
    return array.tolist()
