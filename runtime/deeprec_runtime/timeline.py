"""Timelines: full execution traces of chosen requests, written as Chrome trace JSON.

With `timeline_start_step` S, `timeline_interval_step` I and `timeline_trace_count` N (DeepRec's
fields), requests number S, S+I, ..., S+(N-1)I (counted from 1 per runtime, warmup excluded) run
with RunOptions.FULL_TRACE and their RunMetadata is written to
`timeline_path/timeline-<step>.json` in Chrome's trace event format: open it in chrome://tracing
or ui.perfetto.dev as it is. `oss://` paths are written through the model store when it can
write files.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading

from tensorflow.core.protobuf import config_pb2
from tensorflow.python.client import timeline as tf_timeline

log = logging.getLogger(__name__)


class TimelineRecorder:
    """Decides which requests to trace and writes their traces."""

    def __init__(self, start_step: int, interval_step: int, trace_count: int, path: str,
                 write_bytes=None):
        self.start = max(1, start_step)
        self.interval = max(1, interval_step)
        self.count = trace_count
        self.path = path
        self._write_bytes = write_bytes
        self._counter = itertools.count(1)  # next() is atomic under the GIL
        self.written: list[str] = []
        self._lock = threading.Lock()
        if "://" not in path:
            os.makedirs(path, exist_ok=True)
        elif write_bytes is None:
            raise ValueError(f"timeline_path {path!r}: the model store cannot write files there")

    @classmethod
    def from_config(cls, config, write_bytes=None) -> TimelineRecorder | None:
        if not config.timeline_trace_count or not config.timeline_path:
            return None
        return cls(config.timeline_start_step, config.timeline_interval_step,
                   config.timeline_trace_count, config.timeline_path, write_bytes)

    def claim(self) -> int | None:
        """Counts one request; returns its step when it is to be traced."""
        step = next(self._counter)
        offset = step - self.start
        if offset < 0 or offset % self.interval or offset // self.interval >= self.count:
            return None
        return step

    @staticmethod
    def run_options(base: config_pb2.RunOptions) -> config_pb2.RunOptions:
        traced = config_pb2.RunOptions()
        traced.CopyFrom(base)
        traced.trace_level = config_pb2.RunOptions.FULL_TRACE
        return traced

    def write(self, step: int, run_metadata: config_pb2.RunMetadata) -> str:
        trace = tf_timeline.Timeline(run_metadata.step_stats).generate_chrome_trace_format()
        name = f"timeline-{step}.json"
        if "://" in self.path:
            target = self.path.rstrip("/") + "/" + name
            self._write_bytes(target, trace.encode())
        else:
            target = os.path.join(self.path, name)
            tmp = target + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(trace)
            os.replace(tmp, target)  # a reader never sees half a trace
        with self._lock:
            self.written.append(target)
        log.info("wrote timeline of request %d to %s", step, target)
        return target
