"""Version source: turns a checkpoint folder into the list of servable versions.

It knows nothing about TensorFlow. Discovery follows DeepRec's Processor: each sub-folder of
`checkpoint_dir` with a `checkpoint` state file is a version, named by the folder
("checkpoint_2"); its full checkpoint is the highest step `*.ckpt-N.index`; its deltas are the
`*.ckpt-M.index` files with M > N in `.incremental_checkpoint/` (or `.incremental_ckpt/`), in step
order (each is cumulative since the full checkpoint, so the manager applies the latest). The
newest version is the one whose state file was written last.

A checkpoint is complete only when its `.index` and every `.data-XXXXX-of-YYYYY` shard are
present, so a half-copied checkpoint is never offered to the loader.
"""

from __future__ import annotations

import logging
import re

from google.protobuf import text_format

from deeprec_runtime.core.versions import BadVersion, Delta, VersionInfo
from deeprec_runtime.store.base import FileInfo, ModelStore

log = logging.getLogger(__name__)

DELTA_DIRS = (".incremental_checkpoint", ".incremental_ckpt")
STATE_FILE = "checkpoint"
_INDEX = re.compile(r"^(?P<base>.+)-(?P<step>\d+)\.index$")
_SHARD = re.compile(r"^(?P<base>.+-\d+)\.data-(?P<i>\d{5})-of-(?P<n>\d{5})$")

__all__ = ["BadVersion", "Delta", "VersionInfo", "VersionSource"]


def _complete_checkpoints(entries: list[FileInfo]) -> tuple[dict[int, str], list[str]]:
    """step -> base name of every complete checkpoint in one folder, plus problems seen."""
    names = {e.name: e for e in entries if not e.is_dir}
    shards: dict[str, list[tuple[int, int, int]]] = {}
    for name, info in names.items():
        m = _SHARD.match(name)
        if m:
            shards.setdefault(m["base"], []).append((int(m["i"]), int(m["n"]), info.size))
    found: dict[int, str] = {}
    problems = []
    for name, info in names.items():
        m = _INDEX.match(name)
        if not m:
            continue
        base = name[: -len(".index")]
        parts = shards.get(base, [])
        total = parts[0][1] if parts else 0
        if not parts or sorted(i for i, _, _ in parts) != list(range(total)) or info.size == 0:
            problems.append(f"{base}: incomplete (index or data shards missing)")
            continue
        found[int(m["step"])] = base
    return found, problems


class VersionSource:
    """Lists the versions under `checkpoint_dir` of a store."""

    def __init__(self, store: ModelStore, checkpoint_dir: str):
        self._store = store
        self._root = checkpoint_dir.rstrip("/") if checkpoint_dir not in ("/",) else checkpoint_dir

    def scan(self) -> tuple[list[VersionInfo], list[BadVersion]]:
        """Every servable version, newest first, and the folders that could not be used."""
        versions: list[VersionInfo] = []
        bad: list[BadVersion] = []
        root_state = self._store.stat(self._store.join(self._root, STATE_FILE))
        if root_state is not None and not root_state.is_dir:
            # checkpoint_dir is itself a version folder (a plain TensorFlow checkpoint folder).
            candidates = [("", self._root)]
        else:
            candidates = [(e.name, self._store.join(self._root, e.name))
                          for e in self._store.list(self._root)
                          if e.is_dir and not e.name.startswith(".")]
        for name, path in candidates:
            name = name or path.rstrip("/").rsplit("/", 1)[-1]
            try:
                result = self._scan_version(name, path)
            except PermissionError as exc:  # e.g. a symlink leaving the store: skip that folder only
                result = BadVersion(name, str(exc))
            if isinstance(result, VersionInfo):
                versions.append(result)
            elif result is not None:
                bad.append(result)
        versions.sort(key=lambda v: (v.mtime, v.full_step, v.delta_step), reverse=True)
        return versions, bad

    def _scan_version(self, name: str, path: str) -> VersionInfo | BadVersion | None:
        entries = self._store.list(path)
        state = next((e for e in entries if e.name == STATE_FILE and not e.is_dir), None)
        if state is None:
            return None  # not a version (yet): training writes the state file last
        try:
            _parse_state(self._store.read_bytes(self._store.join(path, STATE_FILE)))
        except ValueError as exc:
            return BadVersion(name, f"state file '{STATE_FILE}' is unreadable: {exc}")
        fulls, problems = _complete_checkpoints(entries)
        if not fulls:
            return BadVersion(name, "no complete full checkpoint (*.index with all .data shards)"
                              + (f"; {'; '.join(problems)}" if problems else ""))
        full_step = max(fulls)
        deltas: list[Delta] = []
        for sub in DELTA_DIRS:
            sub_path = self._store.join(path, sub)
            found, sub_problems = _complete_checkpoints(self._store.list(sub_path))
            problems += sub_problems
            deltas += [Delta(step, self._store.join(sub_path, base))
                       for step, base in found.items() if step > full_step]
        deltas.sort(key=lambda d: d.step)
        return VersionInfo(name=name, path=path, full_step=full_step,
                           full_prefix=self._store.join(path, fulls[full_step]),
                           deltas=tuple(deltas), mtime=state.mtime, problems=tuple(problems))


def _parse_state(data: bytes) -> None:
    """Raises ValueError unless `data` is a CheckpointState text proto."""
    from tensorflow.python.training.checkpoint_state_pb2 import CheckpointState

    try:
        text_format.Parse(data.decode("utf-8"), CheckpointState())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc).splitlines()[0][:200]) from None
