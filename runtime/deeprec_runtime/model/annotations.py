"""Reads the pod's annotations from a Kubernetes Downward API file.

The kubelet writes one `key="value"` line per annotation, the value quoted as Go's strconv.Quote
does; the file is replaced atomically (symlink swap), so a plain read always sees a whole file.
"""

from __future__ import annotations

import json

TARGET_VERSION_ANNOTATION = "serving.deeprec.io/target-version"
DEFAULT_ANNOTATIONS_FILE = "/etc/podinfo/annotations"


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


def target_version_annotation(model_name: str | None = None) -> str:
    """The annotation that pins a model: the plain key for a runtime's default (first) model,
    `serving.deeprec.io/target-version.<model>` for the others of a multi-model runtime."""
    return TARGET_VERSION_ANNOTATION if not model_name else f"{TARGET_VERSION_ANNOTATION}.{model_name}"


def read_target_version(path: str | None, key: str = TARGET_VERSION_ANNOTATION) -> str:
    """The version the operator asks this pod to serve: "latest" when the file or the annotation
    is absent or empty."""
    if not path:
        return "latest"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (FileNotFoundError, NotADirectoryError):
        return "latest"
    return parse_annotations(text).get(key, "").strip() or "latest"
