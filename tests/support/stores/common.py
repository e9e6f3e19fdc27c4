"""What the store tests share: the OSS test account and bucket, a fast retry policy, and an
uploader that mirrors a local model folder to OSS the way a training job would."""

from __future__ import annotations

import os

import oss2

from deeprec_runtime.store.retry import RetryPolicy

ACCESS_ID = "LTAI5tTestAccessId"
ACCESS_KEY = "test-secret-key-never-logged"
BUCKET = "models"

#: Fast backoff so fault tests take milliseconds, same shape as production's.
FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05, deadline=30)


def _upload_order(rel: str) -> tuple[int, str]:
    # A training job's order: data shards, then .index, then the `checkpoint` state file, so a
    # reader never sees a version before its files.
    name = rel.rsplit("/", 1)[-1]
    return (2 if name == "checkpoint" else 1 if name.endswith(".index") else 0, rel)


class Uploader:
    """Mirrors a local folder to oss://bucket/prefix, uploading only new or changed files."""

    def __init__(self, bucket: oss2.Bucket, local_dir: str, prefix: str):
        self.bucket, self.local_dir, self.prefix = bucket, local_dir, prefix.strip("/")
        self._sent: dict[str, tuple[int, float]] = {}

    def sync(self) -> list[str]:
        pending = []
        for dirpath, _dirs, files in os.walk(self.local_dir):
            for name in files:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.local_dir).replace(os.sep, "/")
                st = os.stat(full)
                if self._sent.get(rel) != (st.st_size, st.st_mtime):
                    pending.append((rel, full, (st.st_size, st.st_mtime)))
        pending.sort(key=lambda p: _upload_order(p[0]))
        for rel, full, sig in pending:
            self.bucket.put_object_from_file(f"{self.prefix}/{rel}", full)
            self._sent[rel] = sig
        return [p[0] for p in pending]
