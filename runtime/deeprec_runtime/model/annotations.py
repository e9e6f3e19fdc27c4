"""Reads the pod's annotations from a Kubernetes Downward API file.

The kubelet writes one `key="value"` line per annotation, the value quoted as Go's strconv.Quote
does; the file is replaced atomically (symlink swap), so a plain read always sees a whole file.
"""

from __future__ import annotations

import json

from deeprec_api.pod import LATEST, TARGET_VERSION_ANNOTATION


def parse_annotations(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or not key.strip():
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            try:
                value = json.loads(raw)  # Go's quoting of printable text is valid JSON
            except ValueError:
                value = raw[1:-1]
        else:
            value = raw
        out[key.strip()] = value
    return out


def read_target_version(path: str | None, key: str = TARGET_VERSION_ANNOTATION) -> str:
    """The version the operator asks this pod to serve: "latest" when the file or the annotation
    is absent or empty."""
    if not path:
        return LATEST
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return LATEST
    return parse_annotations(text).get(key, "").strip() or LATEST
