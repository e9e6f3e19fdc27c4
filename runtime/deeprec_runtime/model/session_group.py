"""Session group: several serving lanes over ONE set of parameters, each bound to its cores.

DeepRec runs `session_num` sessions that share one leader's variables. Stock TensorFlow cannot
share variables between DirectSessions (each owns its devices' resource managers), so the group
is one tf.Session whose ConfigProto declares one inter-op thread pool per lane (plus one for
updates); lane i runs its prepared callables with `RunOptions.inter_op_thread_pool = i`, and its
pool's threads (named `tf_Compute<i>` by TensorFlow) are pinned to lane i's cpuset. Parameters
therefore exist once, however many lanes serve them.

Example: session_num 2, cpusets "0;1" -> pools [1 thread on CPU 0, 1 thread on CPU 1]; a gRPC
thread whose sticky id is odd runs its requests on pool 1, i.e. on CPU 1.

Everything that can be decided without TensorFlow running (pools, cpusets, GPU devices) is in
`plan_group`, a pure function the unit tests read like a table; `create_session` applies a plan.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

# threadenv must be imported before TensorFlow: keep this order.
# isort: off
from deeprec_runtime import cpus as cpu_util
from deeprec_runtime import threadenv  # noqa: F401  (sets TF_OVERRIDE_GLOBAL_THREADPOOL first)
from deeprec_runtime.errors import ConfigError

import tensorflow as tf  # after threadenv
from tensorflow.core.protobuf import config_pb2

from deeprec_runtime.deeprec.kernels import CPU_ONLY_OPS
# isort: on

log = logging.getLogger(__name__)

CPU_DEVICE = "/device:CPU:0"
POOL_THREAD_NAME = "tf_Compute{}"
"""Linux thread name TensorFlow gives the threads of session_inter_op_thread_pool[i]."""
INLINE = -1
"""RunOptions.inter_op_thread_pool value that runs every kernel in the calling thread."""


@dataclass(frozen=True)
class LanePlan:
    index: int
    pool: int
    """Inter-op pool index its runs use; INLINE runs kernels in the calling thread."""
    cpus: frozenset[int] | None
    """CPUs its work may run on; None leaves it unbound."""
    device: str
    """Where its graph runs: /device:CPU:0, or /device:GPU:k for its GPU (or virtual GPU)."""


@dataclass(frozen=True)
class GroupPlan:
    lanes: tuple[LanePlan, ...]
    pool_threads: tuple[int, ...]
    """Threads of each session_inter_op_thread_pool entry (0 = TensorFlow's default)."""
    pool_cpus: tuple[frozenset[int] | None, ...]
    update_pool: int
    intra_threads: int
    creator_cpus: frozenset[int] | None
    """Affinity of the thread that creates the session: every pool (intra-op included) inherits
    it, then lane pools are narrowed to their own cpusets."""
    select_policy: str = "MOD"
    update_workers: int = 1
    gpu_ids: tuple[int, ...] = ()
    virtual_gpus_per_gpu: int = 0
    embeddings_on_cpu: bool = False

    @property
    def uses_gpu(self) -> bool:
        return bool(self.gpu_ids)

    def config_proto(self) -> config_pb2.ConfigProto:
        proto = config_pb2.ConfigProto(intra_op_parallelism_threads=self.intra_threads,
                                       allow_soft_placement=True)
        for n in self.pool_threads:
            proto.session_inter_op_thread_pool.add(num_threads=n)
        if self.gpu_ids:
            gpu = proto.gpu_options
            gpu.visible_device_list = ",".join(map(str, self.gpu_ids))
            gpu.allow_growth = True  # several lanes and versions share each GPU
            if self.virtual_gpus_per_gpu > 1:
                # One virtual device per lane on each GPU: TensorFlow gives every virtual device
                # its own compute stream (`use_multi_stream`). Memory is split evenly; growth
                # still applies inside each share.
                for _ in self.gpu_ids:
                    gpu.experimental.virtual_devices.add(
                        memory_limit_mb=[VIRTUAL_GPU_MEMORY_MB] * self.virtual_gpus_per_gpu)
        else:
            proto.device_count["GPU"] = 0
        return proto

    def lane_run_options(self, lane: LanePlan) -> config_pb2.RunOptions:
        return config_pb2.RunOptions(inter_op_thread_pool=lane.pool)

    def update_run_options(self) -> config_pb2.RunOptions:
        return config_pb2.RunOptions(inter_op_thread_pool=self.update_pool)

    def restore_run_options(self) -> config_pb2.RunOptions:
        """How a full checkpoint is restored: on the update pool when model_update_inter_threads
        gives one (and on GPUs); else inline, in the thread that loads, which runs at a lower
        priority (see model/load_thread.py) so that a load yields the CPU to requests."""
        if self.update_pool > 0 or self.uses_gpu:
            return self.update_run_options()
        return config_pb2.RunOptions(inter_op_thread_pool=INLINE)


VIRTUAL_GPU_MEMORY_MB = 4096.0
"""Memory of each virtual GPU when `use_multi_stream` splits a GPU into one device per lane."""


# --- pure planning ----------------------------------------------------------------------------
def parse_gpu_ids(text: str, visible: int) -> tuple[int, ...]:
    """`gpu_ids_list` "0,2" -> (0, 2): ordinals as the process sees them (after
    CUDA_VISIBLE_DEVICES). Raises ConfigError naming `gpu_ids_list`."""
    if not text.strip():
        return ()
    ids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ConfigError("gpu_ids_list", f"{text!r}: {part!r} is not a GPU ordinal; write e.g. '0,2'")
        ids.append(int(part))
    if len(set(ids)) != len(ids):
        raise ConfigError("gpu_ids_list", f"{text!r} names a GPU twice")
    bad = [i for i in ids if i >= visible]
    if bad:
        raise ConfigError("gpu_ids_list", f"GPU(s) {bad} do not exist: this process sees {visible} "
                                          f"GPU(s){f' (ordinals 0-{visible - 1})' if visible else ''}")
    return tuple(ids)


def gpu_lane_devices(gpu_ids: Sequence[int], session_num: int, multi_stream: bool) -> tuple[str, ...]:
    """Device of each lane: `session_num` lanes per GPU, as DeepRec (|gpus| x session_num).
    TensorFlow renumbers the visible_device_list from 0, so GPU gpu_ids[k] is /device:GPU:k;
    with multi-stream each lane has its own virtual device (own stream) numbered in order."""
    devices = []
    for k, _ in enumerate(gpu_ids):
        for s in range(session_num):
            index = k * session_num + s if multi_stream else k
            devices.append(f"/device:GPU:{index}")
    return tuple(devices)


def plan_group(cfg, allowed: Iterable[int] | None = None, visible_gpus: int | None = None) -> GroupPlan:
    """Derives the group's pools, cpusets and devices from a ModelConfig (pure given `allowed`
    CPUs and the number of `visible_gpus`). Raises ConfigError naming the offending field."""
    allowed_set = frozenset(allowed) if allowed is not None else cpu_util.allowed_cpus()
    gpu_ids: tuple[int, ...] = ()
    if cfg.gpu_ids_list.strip():
        gpu_ids = parse_gpu_ids(cfg.gpu_ids_list, visible_gpus if visible_gpus is not None
                                else count_visible_gpus())
    n = cfg.session_num * max(1, len(gpu_ids))
    explicit = bool(cfg.cpusets.strip())
    lane_cpus: tuple[frozenset[int] | None, ...]
    if explicit or n > 1:
        lane_cpus = cpu_util.parse_cpusets(cfg.cpusets, n, allowed_set)
    else:
        lane_cpus = (None,)
    bound = lane_cpus[0] is not None
    if gpu_ids:
        devices = gpu_lane_devices(gpu_ids, cfg.session_num, cfg.use_multi_stream)
    else:
        devices = (CPU_DEVICE,) * n

    inline = cfg.enable_inline_execute
    pool_threads: list[int] = []
    pool_cpus: list[frozenset[int] | None] = []
    lanes: list[LanePlan] = []
    if inline:
        # Kernels run in the caller; pool 0 only serves loads (and anything TF schedules itself).
        pool_threads.append(cfg.inter_op_parallelism_threads)
        pool_cpus.append(None)
        lanes = [LanePlan(i, INLINE, lane_cpus[i] if bound else None, devices[i]) for i in range(n)]
    elif n == 1:
        pool_threads.append(cfg.inter_op_parallelism_threads)
        pool_cpus.append(lane_cpus[0])
        lanes = [LanePlan(0, 0, lane_cpus[0], devices[0])]
    else:
        for i in range(n):
            cpus_i = lane_cpus[i] or allowed_set
            if cfg.inter_op_parallelism_threads and cfg.use_per_session_threads:
                threads = cfg.inter_op_parallelism_threads  # a private pool of the full size
            elif cfg.inter_op_parallelism_threads:
                threads = max(1, cfg.inter_op_parallelism_threads // n)  # lanes share the budget
            else:
                threads = len(cpus_i)
            pool_threads.append(threads)
            pool_cpus.append(lane_cpus[i])
            lanes.append(LanePlan(i, i, lane_cpus[i], devices[i]))
    update_pool = 0
    if cfg.model_update_inter_threads:
        update_pool = len(pool_threads)
        pool_threads.append(cfg.model_update_inter_threads)
        pool_cpus.append(None)
    intra = cfg.intra_op_parallelism_threads
    if bound and intra == 0:
        # TensorFlow's intra-op pool belongs to the session, not to a lane. One thread makes
        # Eigen run each kernel inside the lane's own (pinned) thread, so a lane's work stays on
        # its cpuset; an explicit value keeps a shared pool on the union of the lanes' CPUs.
        intra = 1
    creator = frozenset().union(*[c for c in lane_cpus if c]) if bound else None
    return GroupPlan(lanes=tuple(lanes), pool_threads=tuple(pool_threads),
                     pool_cpus=tuple(pool_cpus), update_pool=update_pool, intra_threads=intra,
                     creator_cpus=creator, select_policy=cfg.select_session_policy,
                     update_workers=max(1, cfg.model_update_intra_threads), gpu_ids=gpu_ids,
                     virtual_gpus_per_gpu=cfg.session_num if (gpu_ids and cfg.use_multi_stream) else 0,
                     embeddings_on_cpu=bool(gpu_ids) and cfg.enable_device_placement_optimization)


def count_visible_gpus() -> int:
    return len(tf.config.list_physical_devices("GPU"))


# --- graph placement (pure over a tf.Graph) ---------------------------------------------------
_GATHERS = {"GatherV2", "Gather", "ResourceGather", "SparseSegmentSum", "SparseSegmentMean",
            "SparseSegmentSqrtN"}
_PASS_THROUGH = {"ReadVariableOp", "Identity", "VariableShape"}
_VARIABLES = {"VarHandleOp", "VariableV2", "Variable"}


def embedding_ops(graph: tf.Graph) -> set[str]:
    """Names of the ops that hold or read embedding tables: variables whose value reaches a
    gather's params input, the reads in between, the gathers, and every op using the variable
    handle (assign, scatter, save/restore slices)."""
    found: set[str] = set()
    for op in graph.get_operations():
        if op.type not in _GATHERS or not op.inputs:
            continue
        chain = [op.name]
        src = op.inputs[0].op
        while src.type in _PASS_THROUGH and src.inputs:
            chain.append(src.name)
            src = src.inputs[0].op
        if src.type in _VARIABLES:
            found.update(chain)
            found.add(src.name)
            for out in src.outputs:
                found.update(c.name for c in out.consumers() if c.type not in ("SaveV2", "RestoreV2"))
    return found


def cpu_only_ops(graph: tf.Graph) -> set[str]:
    """Ops of the EV op library (CPU kernels only), the resources they read and every op using
    those resources (fills, scatters, finds): a table and its readers on one device."""
    found: set[str] = set()
    for op in graph.get_operations():
        if op.type not in CPU_ONLY_OPS:
            continue
        found.add(op.name)
        for tensor in op.inputs:
            if tensor.dtype == tf.resource:
                found.add(tensor.op.name)
                found.update(c.name for c in tensor.consumers())
    return found


def place_graph(graph: tf.Graph, device: str, embeddings_on_cpu: bool) -> dict[str, str]:
    """Places every op of an imported (not finalized) graph on `device`, embeddings on the CPU
    when `embeddings_on_cpu` (DeepRec's device placement optimization: big tables stay in host
    memory, the dense part runs on the GPU). Save/restore ops stay on the CPU. Returns
    op name -> device, which is also what the unit tests check."""
    cpu_ops = (embedding_ops(graph) if embeddings_on_cpu else set()) | cpu_only_ops(graph)
    placed: dict[str, str] = {}
    for op in graph.get_operations():
        if op.type in ("SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename",
                       "StringJoin", "Const") and "save" in op.name.lower():
            dev = CPU_DEVICE
        else:
            dev = CPU_DEVICE if op.name in cpu_ops else device
        op._set_device(dev)  # the only way to re-place an imported graph
        placed[op.name] = dev
    return placed


# --- the running group ------------------------------------------------------------------------
_CREATE_LOCK = threading.Lock()
_sticky_ids = itertools.count()
_thread_state = threading.local()


def _sticky_id() -> int:
    """DeepRec's MOD policy: each calling thread gets a sequential id once, for its lifetime."""
    tid = getattr(_thread_state, "sticky", None)
    if tid is None:
        tid = _thread_state.sticky = next(_sticky_ids)
    return tid


@dataclass
class Lane:
    plan: LanePlan
    run_options: config_pb2.RunOptions
    threads: tuple[int, ...] = ()
    """Thread ids of its pinned pool (empty for inline lanes: they run in the caller)."""

    @property
    def index(self) -> int:
        return self.plan.index

    @property
    def pins_caller(self) -> bool:
        return self.plan.pool == INLINE and self.plan.cpus is not None

    def pin_caller(self) -> None:
        """Inline lanes run kernels in the calling thread: move it onto the lane's CPUs (once per
        thread and cpuset; MOD keeps a thread on one lane, so this is a syscall per thread)."""
        cpus = self.plan.cpus
        if getattr(_thread_state, "pinned", None) is not cpus:
            cpu_util.pin_current_thread(cpus)  # type: ignore[arg-type]
            _thread_state.pinned = cpus


@dataclass
class SessionGroup:
    session: tf.compat.v1.Session
    plan: GroupPlan
    lanes: list[Lane]
    pool_tids: dict[int, tuple[int, ...]] = field(default_factory=dict)
    _rr: Iterator[int] = field(default_factory=itertools.count)

    def select(self) -> Lane:
        """The lane for this request: a per-thread override (warmup, tests), else the policy."""
        forced = getattr(_thread_state, "lane", None)
        n = len(self.lanes)
        if forced is not None:
            return self.lanes[forced % n]
        if n == 1:
            return self.lanes[0]
        if self.plan.select_policy == "RR":
            return self.lanes[next(self._rr) % n]
        return self.lanes[_sticky_id() % n]

    @staticmethod
    @contextmanager
    def using(lane: int) -> Iterator[None]:
        """Runs this thread's requests on one lane (warmup visits every lane this way)."""
        before = getattr(_thread_state, "lane", None)
        _thread_state.lane = lane
        try:
            yield
        finally:
            _thread_state.lane = before

    def update_run_options(self) -> config_pb2.RunOptions:
        return self.plan.update_run_options()


def create_session(graph: tf.Graph, plan: GroupPlan) -> SessionGroup:
    """Creates the group's one session and pins each lane pool's threads to its cpuset.

    Threads are found by diffing /proc/self/task around the creation (pools start their threads
    eagerly) and matched by name; creations are serialized so two sessions' pools never mix."""
    with _CREATE_LOCK:
        before = set(cpu_util.threads())
        original = os.sched_getaffinity(0)
        if plan.creator_cpus:
            cpu_util.pin_current_thread(plan.creator_cpus)
        try:
            session = tf.compat.v1.Session(graph=graph, config=plan.config_proto())
        finally:
            if plan.creator_cpus:
                os.sched_setaffinity(0, original)
        new = {tid: name for tid, name in cpu_util.threads().items() if tid not in before}
    pool_tids: dict[int, tuple[int, ...]] = {}
    for k, cpus in enumerate(plan.pool_cpus):
        tids = tuple(sorted(t for t, name in new.items() if name == POOL_THREAD_NAME.format(k)))
        pool_tids[k] = tids
        if cpus is None:
            continue
        expected = plan.pool_threads[k]
        if expected and len(tids) != expected:
            log.warning("inter-op pool %d: found %d thread(s) named %s, expected %d; binding those",
                        k, len(tids), POOL_THREAD_NAME.format(k), expected)
        cpu_util.pin(tids, cpus)
    lanes = [Lane(lp, plan.lane_run_options(lp), pool_tids.get(lp.pool, ()) if lp.pool >= 0 else ())
             for lp in plan.lanes]
    if plan.creator_cpus:
        log.info("session group: %d lane(s) on cpusets %s", len(lanes),
                 "; ".join(cpu_util.format_cpu_list(lp.cpus or ()) for lp in plan.lanes))
    return SessionGroup(session, plan, lanes, pool_tids)
