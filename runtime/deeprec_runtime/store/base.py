"""The ModelStore interface and the local-disk backend."""

from __future__ import annotations

import builtins
import glob
import os
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deeprec_runtime.errors import ConfigError

if TYPE_CHECKING:
    from deeprec_runtime.config import ModelConfig


class StoreError(OSError):
    """A remote store call failed; the message names the path and, for credentials, the config
    fields to check (never their values). The manager keeps serving and retries on the next poll."""


class StoreNotFound(StoreError, FileNotFoundError):
    """The path (object, folder or bucket) does not exist."""


class StoreAuthError(StoreError, PermissionError):
    """The store refused the credentials or denied access."""


class StoreUnavailable(StoreError):
    """Transient failures (5xx, timeouts, resets) outlasted the retry policy."""


@dataclass(frozen=True)
class FileInfo:
    name: str
    """Base name inside the listed folder."""
    is_dir: bool
    size: int
    mtime: float


class ModelStore:
    """A read-only file-system view rooted at a model's folders.

    Example: `store.list("ckpt_parent/checkpoint_3/.incremental_checkpoint")` lists the deltas of a
    version, and `store.local_path(prefix_files)` makes them readable by TensorFlow.
    """

    def join(self, *parts: str) -> str:
        return posixpath.join(*parts)

    def list(self, path: str) -> list[FileInfo]:
        """Entries directly inside `path`; [] when it does not exist."""
        raise NotImplementedError

    def read_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    def stat(self, path: str) -> FileInfo | None:
        raise NotImplementedError

    def localize_checkpoint(self, prefix: str) -> str:
        """Makes the checkpoint at `prefix` (its .index and .data shards) readable on local disk
        and returns the local prefix."""
        raise NotImplementedError

    def localize_tree(self, path: str) -> str:
        """Makes the folder `path` (e.g. a SavedModel) readable on local disk."""
        raise NotImplementedError

    def retain(self, keep: builtins.list[str]) -> None:
        """Frees local copies of everything fetched from outside the folders in `keep` (the
        versions the manager may still load from). A no-op for stores read in place."""


class LocalStore(ModelStore):
    """Local disk (also what a Kubernetes volume mount looks like to the runtime).

    Symbolic links that lead outside the root folder are refused, so a store cannot be used to read
    arbitrary files of the pod."""

    def __init__(self, roots: list[str]):
        self._roots = [os.path.realpath(r) for r in roots if r]

    def _check(self, path: str) -> str:
        real = os.path.realpath(path)
        if self._roots and not any(real == r or real.startswith(r + os.sep) for r in self._roots):
            raise PermissionError(f"{path} resolves outside the model folders")
        return path

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def list(self, path: str) -> list[FileInfo]:
        self._check(path)
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for entry in entries:
            try:
                st = entry.stat()
            except FileNotFoundError:  # removed between scandir and stat
                continue
            out.append(FileInfo(entry.name, entry.is_dir(), st.st_size, st.st_mtime))
        return out

    def stat(self, path: str) -> FileInfo | None:
        self._check(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return FileInfo(os.path.basename(path), os.path.isdir(path), st.st_size, st.st_mtime)

    def read_bytes(self, path: str) -> bytes:
        self._check(path)
        with open(path, "rb") as fh:
            return fh.read()

    def localize_checkpoint(self, prefix: str) -> str:
        # Every file TensorFlow will open: a data shard linked to a file outside the model
        # folders would otherwise be read as tensor values.
        for path in [prefix + ".index", *glob.glob(glob.escape(prefix) + ".data-*")]:
            self._check(path)
        return prefix

    def localize_tree(self, path: str) -> str:
        return self._check(path)


def open_store(config: ModelConfig) -> ModelStore:
    """The store the config asks for."""
    if config.model_store_type == "local":
        return LocalStore([config.savedmodel_dir, config.checkpoint_dir])
    if config.model_store_type == "oss":
        from deeprec_runtime.store.oss import OssStore  # imported only when used: oss2

        return OssStore.from_config(config)
    if config.model_store_type == "hdfs":
        from deeprec_runtime.store.hdfs import HdfsStore  # imported only when used: fsspec

        return HdfsStore.from_config(config)
    raise ConfigError("model_store_type", f"{config.model_store_type!r} store is not available in this build")
