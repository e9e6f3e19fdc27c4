"""Helpers for end-to-end tests against the control plane of ``scripts/k8s-plane.sh``.

Import them as ``from tests.support.plane import ...`` (end-to-end tests and the operator
benchmarks in ``bench/`` both do).

- :class:`Plane`: one running plane (kubeconfig, ``kubectl``, ``helm``), what the
  ``k8s_plane`` fixture yields.
- :func:`service_account_kubeconfig`: a kubeconfig that authenticates as a ServiceAccount
  (a token from ``kubectl create token``), to run a process, e.g. the operator, with exactly
  the rights a chart grants it.
- :class:`DownwardAPIBridge`: copies a pod's annotations from the API into a local file in the
  format the kubelet writes for a Downward API volume, so a local process can stand in for the
  pod's container (kwok pods run nothing).
- :func:`format_downward_api`: that format, as a pure function.
- :func:`write_pod_volumes`: writes a pod's ConfigMap, Secret and projected volumes into local
  folders as the kubelet would mount them, and :func:`standin_args` maps a container's arguments
  onto those folders, so the stand-in runs the container's own command line (TLS files and token
  files from the real Secrets included).
- :func:`wait_until`: poll a condition with a deadline and a useful failure message.
- :func:`plane_for`: the plane of a folder, or one started for a block (the benchmarks).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO

__all__ = [
    "CommandError",
    "DownwardAPIBridge",
    "Plane",
    "format_downward_api",
    "kubeconfig_ca_file",
    "go_quote",
    "plane_for",
    "service_account_kubeconfig",
    "standin_args",
    "wait_until",
    "write_pod_volumes",
]


class CommandError(AssertionError):
    """A kubectl or helm command failed; the message carries the command and its stderr."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.proc = proc
        cmd = " ".join(str(a) for a in proc.args)
        super().__init__(
            f"command failed with exit status {proc.returncode}: {cmd}\n"
            f"--- stderr ---\n{(proc.stderr or '').strip()}\n"
            f"--- stdout ---\n{(proc.stdout or '').strip()[-4000:]}"
        )


def _run(args: list[str], *, env: Mapping[str, str], check: bool, input: str | None,
         timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=dict(env), input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandError(proc)
    return proc


@dataclass
class Plane:
    """A running control plane started by ``scripts/k8s-plane.sh up DIR``.

    ``kubectl(*args)`` and ``helm(*args)`` run the plane's own binaries against its admin
    kubeconfig and return the ``subprocess.CompletedProcess`` (text mode); a non-zero exit
    raises :class:`CommandError` with stderr unless ``check=False``. Pass ``input=`` for stdin
    (``kubectl("apply", "-f", "-", input=yaml_text)``) and ``kubeconfig=`` to act as another
    identity (see :func:`service_account_kubeconfig`).
    """

    dir: Path
    kubeconfig: Path
    bin_dir: Path
    server: str
    pod_cidrs: list[str]
    nodes: list[str]
    env: dict[str, str] = field(repr=False)
    """Process environment for tools and local processes: KUBECONFIG and PATH set to this plane."""

    @classmethod
    def from_dir(cls, plane_dir: str | os.PathLike) -> Plane:
        plane_dir = Path(plane_dir)
        values: dict[str, str] = {}
        for line in (plane_dir / "env").read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export "):].partition("=")
                values[key] = value
        bin_dir = Path(values["K8S_PLANE_BIN"])
        env = dict(os.environ)
        env["KUBECONFIG"] = values["KUBECONFIG"]
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        if "KUBECACHEDIR" in values:
            env["KUBECACHEDIR"] = values["KUBECACHEDIR"]
        # helm keeps caches and repository config under HOME; keep them inside the plane.
        env.setdefault("HELM_CACHE_HOME", str(plane_dir / "helm" / "cache"))
        env.setdefault("HELM_CONFIG_HOME", str(plane_dir / "helm" / "config"))
        env.setdefault("HELM_DATA_HOME", str(plane_dir / "helm" / "data"))
        return cls(
            dir=plane_dir,
            kubeconfig=Path(values["KUBECONFIG"]),
            bin_dir=bin_dir,
            server=values["K8S_PLANE_SERVER"],
            pod_cidrs=values["K8S_PLANE_POD_CIDRS"].split(","),
            nodes=values["K8S_PLANE_NODES"].split(","),
            env=env,
        )

    def kubectl(self, *args: Any, check: bool = True, input: str | None = None,
                kubeconfig: str | os.PathLike | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig)]
        return _run(cmd + [str(a) for a in args], env=self.env, check=check, input=input,
                    timeout=timeout)

    def kubectl_json(self, *args: Any, kubeconfig: str | os.PathLike | None = None) -> Any:
        """``kubectl ARGS -o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)

    def apply(self, manifests: str | Mapping | Iterable[Mapping], namespace: str | None = None,
              kubeconfig: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
        """``kubectl apply`` YAML text, one object (dict) or a list of objects."""
        if isinstance(manifests, str):
            text = manifests
        elif isinstance(manifests, Mapping):
            text = yaml.safe_dump(dict(manifests))
        else:
            text = yaml.safe_dump_all([dict(m) for m in manifests])
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=text, kubeconfig=kubeconfig)

    def helm(self, *args: Any, check: bool = True, input: str | None = None,
             kubeconfig: str | os.PathLike | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / "helm"), "--kubeconfig", str(kubeconfig or self.kubeconfig)]
        return _run(cmd + [str(a) for a in args], env=self.env, check=check, input=input,
                    timeout=timeout)

    def components(self) -> dict[str, bool]:
        """Each component's liveness: {"kube-apiserver": True, ...} (from DIR/pids)."""
        alive = {}
        for pid_file in sorted((self.dir / "pids").glob("*.pid")):
            if pid_file.stem == "watch":  # the owner watch, not a component
                continue
            try:
                pid = int(pid_file.read_text())
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                alive[pid_file.stem] = state != "Z"
            except (OSError, ValueError, IndexError):
                alive[pid_file.stem] = False
        return alive

    def logs(self, component: str, lines: int = 50) -> str:
        """Last lines of a component's log (etcd, kube-apiserver, kube-controller-manager,
        kube-scheduler, kwok)."""
        path = self.dir / "logs" / f"{component}.log"
        if not path.exists():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


PLANE_SCRIPT = REPO / "scripts" / "k8s-plane.sh"


@contextlib.contextmanager
def plane_for(plane_dir: str | os.PathLike | None) -> Iterator[Plane]:
    """The plane already running in `plane_dir`, or, when it is None, a new plane started for
    the block and stopped after it, whatever the block raised (it also stops if this process
    dies first: --owner-pid)."""
    if plane_dir is not None:
        yield Plane.from_dir(plane_dir)
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-plane-"))
    subprocess.run(["bash", str(PLANE_SCRIPT), "up", str(folder), "--owner-pid", str(os.getpid())],
                   check=True, timeout=300)
    try:
        yield Plane.from_dir(folder)
    finally:
        subprocess.run(["bash", str(PLANE_SCRIPT), "down", str(folder)], timeout=120, check=False)


def wait_until(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.2,
               message: str | Callable[[], str] = "condition") -> Any:
    """Call ``predicate`` until it returns something truthy; return that value.

    On timeout raise ``AssertionError`` naming ``message`` (a string, or a callable that builds
    one then, e.g. from the current state) and the last exception the predicate raised.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_error = exc
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            suffix = f"; last error: {last_error!r}" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {text}{suffix}")
        time.sleep(interval)


def service_account_kubeconfig(plane: Plane, namespace: str, service_account: str,
                               path: str | os.PathLike, duration: str = "2h") -> Path:
    """Write a kubeconfig at ``path`` that authenticates as ``namespace/service_account``.

    The token comes from ``kubectl create token`` (a bound token the API server signs), the
    server and CA from the plane's admin kubeconfig, so whatever runs with it has exactly the
    rights RBAC gives that ServiceAccount. The context's namespace is ``namespace``.
    """
    token = plane.kubectl("create", "token", service_account, "-n", namespace,
                          "--duration", duration).stdout.strip()
    admin = yaml.safe_load(plane.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "deeprec-e2e", "cluster": {
            "server": cluster["server"],
            "certificate-authority-data": cluster["certificate-authority-data"],
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {
            "cluster": "deeprec-e2e", "user": user, "namespace": namespace}}],
        "current-context": user,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)
    return path


# --- Downward API files --------------------------------------------------------------------

_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t",
               "\v": r"\v", "\\": r"\\", '"': r"\""}


def _go_is_print(ch: str) -> bool:
    # Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space.
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def go_quote(value: str) -> str:
    """Go's ``strconv.Quote``: a double-quoted literal with Go escapes."""
    out = ['"']
    for ch in value:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif _go_is_print(ch):
            out.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x20 or cp == 0x7F:
                out.append(f"\\x{cp:02x}")
            elif 0xD800 <= cp <= 0xDFFF:  # a lone surrogate is not valid UTF-8
                out.append("\\ufffd")
            elif cp < 0x10000:
                out.append(f"\\u{cp:04x}")
            else:
                out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


def format_downward_api(values: Mapping[str, str]) -> str:
    """The text the kubelet writes for a ``metadata.annotations`` (or labels) Downward API file.

    Same as ``k8s.io/kubernetes/pkg/fieldpath.FormatMap``: keys sorted, one ``key="value"`` line
    each, the value quoted like Go's ``strconv.Quote``, lines joined by ``\\n`` with no newline
    at the end.
    """
    return "\n".join(f"{key}={go_quote(values[key])}"
                     for key in sorted(values, key=lambda k: k.encode()))


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class DownwardAPIBridge:
    """Keeps a local file in step with a pod's annotations, as a Downward API volume would.

    kwok pods run no containers. To let a real local process (e.g. ``deeprec-runtime serve
    --annotations-file PATH``) stand in for a pod, start a bridge for that pod: a background
    thread polls the pod through the API and rewrites ``path`` atomically (write + rename, as the
    kubelet's atomic writer swaps files) whenever the annotations change. ``field`` may be
    ``"labels"`` for a labels file.

    Use as a context manager, or ``start()`` / ``stop()``::

        with DownwardAPIBridge(plane.kubeconfig, ns, pod, tmp_path / "annotations"):
            ...

    ``writes`` counts the rewrites; ``wait_for(key, value)`` blocks until the file has that
    annotation value. The API client is the ``kubernetes`` package's, so polling costs one
    HTTP GET on a kept-alive connection, not a kubectl process.
    """

    def __init__(self, kubeconfig: str | os.PathLike, namespace: str, pod: str,
                 path: str | os.PathLike, interval: float = 0.2, field: str = "annotations"):
        if field not in ("annotations", "labels"):
            raise ValueError("field must be 'annotations' or 'labels'")
        self.kubeconfig = str(kubeconfig)
        self.namespace = namespace
        self.pod = pod
        self.path = Path(path)
        self.interval = interval
        self.field = field
        self.writes = 0
        self.last_error: BaseException | None = None
        self._current: dict[str, str] | None = None
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api = None

    def __enter__(self) -> DownwardAPIBridge:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> DownwardAPIBridge:
        from kubernetes import client, config  # imported here: only the bridge needs it

        api_client = config.new_client_from_config(config_file=self.kubeconfig)
        self._api = client.CoreV1Api(api_client)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sync_once()  # the file exists before start() returns, as it would in a pod
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"downward-api-{self.namespace}-{self.pod}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._api is not None:
            self._api.api_client.close()

    def sync_once(self) -> bool:
        """Read the pod once; rewrite the file if its annotations changed. True if rewritten."""
        pod = self._api.read_namespaced_pod(self.pod, self.namespace, _request_timeout=10)
        values = dict(getattr(pod.metadata, self.field) or {})
        with self._lock:
            if values == self._current:
                return False
            _atomic_write(self.path, format_downward_api(values))
            self._current = values
            self.writes += 1
            self._lock.notify_all()
            return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync_once()
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - a deleted pod or a restart: keep trying
                self.last_error = exc

    def current(self) -> dict[str, str]:
        with self._lock:
            return dict(self._current or {})

    def wait_for(self, key: str, value: str, timeout: float = 30) -> None:
        """Block until the file holds ``key`` with ``value``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self._current or {}).get(key) != value:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.path} never got {key}={value!r} within {timeout}s; has "
                        f"{(self._current or {}).get(key)!r} (last error: {self.last_error!r})")
                self._lock.wait(min(left, 0.5))


def kubeconfig_ca_file(plane: Plane, path: str | os.PathLike) -> Path:
    """Write the plane's CA certificate (PEM) to ``path``, for clients that want a file."""
    admin = yaml.safe_load(plane.kubeconfig.read_text())
    data = admin["clusters"][0]["cluster"]["certificate-authority-data"]
    path = Path(path)
    path.write_bytes(base64.b64decode(data))
    return path


# --- Pod volumes for stand-ins -------------------------------------------------------------------

def _volume_files(plane: Plane, namespace: str, volume: Mapping[str, Any]) -> dict[str, bytes] | None:
    """The files a ConfigMap, Secret or projected volume holds (path -> bytes), read from the API
    as the kubelet reads them; None for other volume types."""
    def source_files(kind: str, name: str, items: list[dict[str, str]] | None) -> dict[str, bytes]:
        obj = plane.kubectl_json("get", kind, name, "-n", namespace)
        if kind == "secret":
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        else:
            data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        if items is None:
            return data
        return {item["path"]: data[item["key"]] for item in items}

    if "configMap" in volume:
        return source_files("configmap", volume["configMap"]["name"], volume["configMap"].get("items"))
    if "secret" in volume:
        return source_files("secret", volume["secret"]["secretName"], volume["secret"].get("items"))
    if "projected" in volume:
        files: dict[str, bytes] = {}
        for source in volume["projected"]["sources"]:
            for kind in ("secret", "configMap"):
                if kind in source:
                    files.update(source_files(kind.lower(), source[kind]["name"], source[kind].get("items")))
        return files
    return None


def write_pod_volumes(plane: Plane, namespace: str, pod: Mapping[str, Any], container: str,
                      root: str | os.PathLike) -> dict[str, Path]:
    """Writes the ConfigMap, Secret and projected volumes ``container`` mounts under ``root`` (one
    folder per volume, files mode 0600) and returns {mountPath: folder}. Other volumes (Downward
    API: see :class:`DownwardAPIBridge`; emptyDir) are left to the caller."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    spec = next(c for c in pod["spec"]["containers"] if c["name"] == container)
    mounts: dict[str, Path] = {}
    for mount in spec.get("volumeMounts") or []:
        files = _volume_files(plane, namespace, volumes[mount["name"]])
        if files is None:
            continue
        folder = Path(root) / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for path, data in files.items():
            fd = os.open(folder / path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        mounts[mount["mountPath"]] = folder
    return mounts


def standin_args(args: Iterable[str], mounts: Mapping[str, str | os.PathLike],
                 overrides: Mapping[str, str] | None = None) -> list[str]:
    """A container's arguments with in-pod paths under a mount path replaced by local folders and
    the values of flags in ``overrides`` replaced (e.g. ``{"--http-port": "0"}``); flags in
    ``overrides`` the arguments lack are appended."""
    out: list[str] = []
    overrides = dict(overrides or {})
    args = list(args)
    for i, arg in enumerate(args):
        if i and args[i - 1] in overrides:
            out.append(overrides.pop(args[i - 1]))
            continue
        for mount_path, folder in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if arg == mount_path or arg.startswith(mount_path.rstrip("/") + "/"):
                arg = str(folder) + arg[len(mount_path.rstrip("/")):]
                break
        out.append(arg)
    for flag, value in overrides.items():
        out += [flag, value]
    return out
