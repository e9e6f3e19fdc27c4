"""Builds Redis commands (RESP) for many fixed-width keys at once with numpy.

Every row key of one table has the same length (prefix + 8-byte big-endian id) and every value the
same size, so a command with thousands of keys is one numpy matrix of fixed-width records turned
into bytes: no per-key Python work, where redis-py's generic packer costs about a microsecond per
argument. The commands go out with redis-py's `Connection.send_packed_command` and replies are
parsed by redis-py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ID_BYTES = 8


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def command(*args: bytes) -> bytes:
    """A command whose arguments are all given (small commands)."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


def row_keys_records(prefix: bytes, ids: np.ndarray) -> np.ndarray:
    """[n, record] uint8 matrix: each row is one RESP bulk string `prefix + id(8 bytes, BE)`."""
    width = len(prefix) + ID_BYTES
    head = b"$%d\r\n" % width
    out = np.empty((ids.shape[0], len(head) + width + 2), np.uint8)
    at = 0
    for part in (head, prefix):
        out[:, at:at + len(part)] = np.frombuffer(part, np.uint8)
        at += len(part)
    out[:, at:at + ID_BYTES] = ids.astype(">u8").view(np.uint8).reshape(-1, ID_BYTES)
    out[:, -2:] = np.frombuffer(b"\r\n", np.uint8)
    return out


def key_value_records(prefix: bytes, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[n, record] uint8 matrix of `key value` bulk-string pairs, for MSET."""
    keys = row_keys_records(prefix, ids)
    flat = np.ascontiguousarray(values).reshape(ids.shape[0], -1)
    width = flat.shape[1] * flat.dtype.itemsize
    head = b"$%d\r\n" % width
    out = np.empty((ids.shape[0], keys.shape[1] + len(head) + width + 2), np.uint8)
    out[:, :keys.shape[1]] = keys
    at = keys.shape[1]
    out[:, at:at + len(head)] = np.frombuffer(head, np.uint8)
    at += len(head)
    out[:, at:at + width] = flat.view(np.uint8).reshape(ids.shape[0], width)
    out[:, -2:] = np.frombuffer(b"\r\n", np.uint8)
    return out


def mset(prefix: bytes, ids: np.ndarray, values: np.ndarray) -> bytes:
    records = key_value_records(prefix, ids, values)
    return b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * ids.shape[0]) + records.tobytes()


def evalsha_with_keys(sha: str, first_keys: Sequence[bytes], row_keys: Sequence[np.ndarray],
                      argv: Sequence[bytes]) -> bytes:
    """EVALSHA sha numkeys first_keys... row key records... argv... as one packed command."""
    n_rows = sum(r.shape[0] for r in row_keys)
    n_keys = len(first_keys) + n_rows
    head = b"*%d\r\n" % (3 + n_keys + len(argv)) + _bulk(b"EVALSHA") + _bulk(sha.encode()) + \
        _bulk(b"%d" % n_keys) + b"".join(_bulk(k) for k in first_keys)
    return head + b"".join(r.tobytes() for r in row_keys) + b"".join(_bulk(a) for a in argv)
