"""Starts a real HDFS (Hadoop's MiniDFSCluster, WebHDFS on) built by scripts/hdfs-minicluster.sh."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

from tests.support.paths import REPO

SCRIPT = REPO / "scripts" / "hdfs-minicluster.sh"
START_TIMEOUT = 120.0


class HdfsCluster:
    def __init__(self, workdir: Path):
        # Builds (or reuses) the cached jars: a missing JDK or Maven fails here, loudly.
        built = subprocess.run(
            [str(SCRIPT), "command"], check=False, capture_output=True, text=True, timeout=600
        )
        if built.returncode != 0:
            raise RuntimeError(f"{SCRIPT} command failed:\n{built.stderr[-3000:]}")
        self.workdir = workdir
        self.log_path = workdir / "minicluster.log"
        ready = workdir / "ready"
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            # stdin is a pipe: the cluster exits when it closes, even if this process dies.
            self.proc = subprocess.Popen(
                shlex.split(built.stdout.strip()) + [str(workdir / "data"), str(ready)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                self.stop()
                raise RuntimeError(f"MiniDFSCluster did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        self.start_seconds = time.monotonic() - started
        values = dict(line.split("=", 1) for line in ready.read_text().split())
        self.webhdfs = values["webhdfs"]
        self.rpc = values["rpc"]

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def upload_tree(fs, local_dir: str, remote_dir: str, sent: dict[str, tuple[int, float]]) -> None:
    """Copies new or changed files, data before .index before the `checkpoint` state file."""
    pending = []
    for dirpath, _dirs, files in os.walk(local_dir):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, local_dir).replace(os.sep, "/")
            st = os.stat(full)
            if sent.get(rel) != (st.st_size, st.st_mtime):
                rank = 2 if name == "checkpoint" else 1 if name.endswith(".index") else 0
                pending.append((rank, rel, full, (st.st_size, st.st_mtime)))
    for _rank, rel, full, sig in sorted(pending):
        with open(full, "rb") as fh:
            fs.pipe_file(f"{remote_dir}/{rel}", fh.read())
        sent[rel] = sig
