"""In-cluster client for the real-node tests: runs inside a pod of the runtime image.

The image has grpcio, the project (DeepRec messages) and tensorflow-serving-api, so this is what
a user's client pod would do: call a model's Service (or single pods) over gRPC with the DeepRec
and the TensorFlow Serving APIs. The test mounts this file from a ConfigMap and drives it over
`kubectl exec -i`: one JSON command a line on stdin, JSON lines back on stdout. TensorFlow (which
the TF Serving messages import) loads once per session, and only in one that calls TF Serving.

Commands (``op``):
- ``info`` ``addrs``: GetServingModelInfo of each address.
- ``predict`` ``addr``: one DeepRec Predict and one TF Serving Predict (+ GetModelStatus).
- ``watch`` ``addrs``, ``version``, ``target``, ``timeout``: prints ``{"event": "watching"}``
  once polling, then, when every address answers a TF Serving Predict from ``version`` (its full
  step as the response's model_spec.version), ``first_seen``: the wall-clock time each one first
  did; with ``target``, also ``target_seen``: when each runtime first reported that target
  version (GetServingModelInfo.target_version), i.e. had read it from its annotations file.
- ``load`` ``target``, ``channels``, ``seconds``, ``stop_file``, ``metrics``: Predict calls
  without pause on ``channels`` separate connections (so kube-proxy spreads them over the
  Service's pods) for at most ``seconds``, or until ``stop_file`` exists; each ``metrics`` pod's
  request counter sampled every 0.25 s; reports sent / failed / errors.
- ``http`` ``url``: GET, for /metrics.
- ``codes`` ``addr``, ``variants``: for each named ``auth`` (or null: plaintext), the status code of
  a DeepRec GetServingModelInfo, a DeepRec Predict and a TF Serving Predict (``OK`` or the gRPC
  code's name).
- ``health`` ``addr``: grpc.health.v1 Check in plaintext, and the code of a DeepRec call there.

``info``, ``predict``, ``watch`` and ``codes`` take ``auth`` for a secured model: file paths of
what the client pod mounts, as a user's client would use them: ``ca`` (the CA that signed the
server's certificate, required), ``server_name`` (checked in the certificate: no cluster DNS runs
on the test node, so the client dials an IP and checks the Service's DNS name), ``cert`` and
``key`` (its client certificate, under mutual TLS), ``token_file`` (the bearer token Secret's key,
first line) or ``token`` (a literal, for a wrong one). The token rides on the channel as gRPC call
credentials (``authorization: Bearer ...``), so every call carries it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import urllib.request

import grpc
import numpy as np

from deeprec_api import predict_pb2 as pb
from deeprec_runtime.codec import decode_array, encode_array

DEEPREC = "/deeprec.serving.PredictionService/"
SPARSE, DENSE, OUTPUT = "sparse_ids", "dense", "probability"
#: One fixed request: answers are comparable across calls, pods and versions.
IDS = np.array([[1, 2, 3, 4, 5, 6, 7, 8]], np.int64)
DENSE_VALUES = np.linspace(0.0, 1.0, 13, dtype=np.float32).reshape(1, 13)

_out_lock = threading.Lock()


def emit(obj: dict) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def channel(addr: str, private: bool = False, auth: dict | None = None) -> grpc.Channel:
    # A private subchannel pool gives each channel its own TCP connection even to one address.
    options: list[tuple[str, object]] = [("grpc.use_local_subchannel_pool", 1)] if private else []
    if not auth:
        return grpc.insecure_channel(addr, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(auth["ca"]), private_key=_read(auth.get("key")),
        certificate_chain=_read(auth.get("cert")))
    token = auth.get("token") or ""
    if auth.get("token_file"):
        token = (_read(auth["token_file"]) or b"").decode().splitlines()[0].strip()
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token))
    if auth.get("server_name"):
        options.append(("grpc.ssl_target_name_override", auth["server_name"]))
    return grpc.secure_channel(addr, credentials, options=options)


def _call(ch: grpc.Channel, method: str, request, response_type, timeout: float = 5.0):
    fn = ch.unary_unary(DEEPREC + method, request_serializer=type(request).SerializeToString,
                        response_deserializer=response_type.FromString)
    return fn(request, timeout=timeout)


def deeprec_predict(ch: grpc.Channel) -> list[float]:
    request = pb.PredictRequest(signature_name="serving_default")
    encode_array(IDS, request.inputs[SPARSE])
    encode_array(DENSE_VALUES, request.inputs[DENSE])
    response = _call(ch, "Predict", request, pb.PredictResponse)
    return decode_array(response.outputs[OUTPUT], OUTPUT).ravel().tolist()


def model_info(ch: grpc.Channel) -> dict:
    info = _call(ch, "GetServingModelInfo", pb.ServingModelInfoRequest(), pb.ServingModelInfo)
    return {"version": info.version, "full_step": info.full_step, "delta_step": info.delta_step,
            "target_version": info.target_version, "last_update_error": info.last_update_error,
            "versions": {v.name: {"full_step": v.full_step, "state": v.state} for v in info.versions}}


class Tfs:
    """TensorFlow Serving's own client stubs (tensorflow-serving-api), as its users call it."""

    def __init__(self) -> None:
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import (
            get_model_status_pb2,
            model_service_pb2_grpc,
            predict_pb2,
            prediction_service_pb2_grpc,
        )

        self.predict_pb2, self.status_pb2 = predict_pb2, get_model_status_pb2
        self.prediction_stub = prediction_service_pb2_grpc.PredictionServiceStub
        self.model_stub = model_service_pb2_grpc.ModelServiceStub

        def tensor(values: np.ndarray, dtype: int, field: str):
            shape = tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in values.shape])
            proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape)
            getattr(proto, field).extend(values.ravel().tolist())
            return proto

        self.request = predict_pb2.PredictRequest()
        self.request.model_spec.signature_name = "serving_default"
        self.request.inputs[SPARSE].CopyFrom(tensor(IDS, types_pb2.DT_INT64, "int64_val"))
        self.request.inputs[DENSE].CopyFrom(tensor(DENSE_VALUES, types_pb2.DT_FLOAT, "float_val"))

    def predict(self, ch: grpc.Channel, timeout: float = 5.0) -> tuple[int, list[float]]:
        """(the version number that answered, the probabilities)."""
        response = self.prediction_stub(ch).Predict(self.request, timeout=timeout)
        out = response.outputs[OUTPUT]
        values = list(out.float_val) or np.frombuffer(out.tensor_content, np.float32).tolist()
        return response.model_spec.version.value, values

    def status(self, ch: grpc.Channel) -> list[dict]:
        request = self.status_pb2.GetModelStatusRequest()
        response = self.model_stub(ch).GetModelStatus(request, timeout=5.0)
        return [{"version": s.version, "state": self.status_pb2.ModelVersionStatus.State.Name(s.state)}
                for s in response.model_version_status]


def cmd_info(tfs, cmd: dict) -> dict:
    out = {}
    for addr in cmd["addrs"]:
        with channel(addr, auth=cmd.get("auth")) as ch:
            out[addr] = model_info(ch)
    return {"info": out}


def cmd_predict(tfs, cmd: dict) -> dict:
    with channel(cmd["addr"], auth=cmd.get("auth")) as ch:
        deeprec = deeprec_predict(ch)
        number, values = tfs.predict(ch)
        return {"deeprec": deeprec, "tfs": values, "tfs_version": number, "tfs_status": tfs.status(ch),
                "info": model_info(ch)}


def cmd_watch(tfs, cmd: dict) -> dict:
    addrs, version, target = cmd["addrs"], cmd["version"], cmd.get("target")
    deadline = time.monotonic() + float(cmd.get("timeout", 60))
    channels = {a: channel(a, auth=cmd.get("auth")) for a in addrs}
    try:
        first_seen: dict[str, float] = {}
        target_seen: dict[str, float] = {}
        expected: dict[str, int] = {}
        last: dict[str, object] = {}
        polls = 0
        while len(first_seen) < len(addrs) or (target and len(target_seen) < len(addrs)):
            for addr in addrs:
                try:
                    if target and addr not in target_seen:
                        # The runtime reports the target it read from its annotations file.
                        if model_info(channels[addr])["target_version"] == target:
                            target_seen[addr] = time.time()
                    if addr in first_seen:
                        continue
                    if addr not in expected:
                        # The version's number (its full step) as this runtime knows it; a
                        # version it has not discovered yet is not in the list.
                        known = model_info(channels[addr])["versions"].get(version)
                        if known:
                            expected[addr] = int(known["full_step"])
                    if addr in expected:
                        number, _ = tfs.predict(channels[addr])
                        last[addr] = number
                        if number == expected[addr]:
                            first_seen[addr] = time.time()
                except grpc.RpcError as exc:
                    last[addr] = f"{exc.code().name}: {exc.details()}"
            polls += 1
            if polls == 1:
                emit({"event": "watching", "t": time.time()})
            if time.monotonic() > deadline:
                return {"ok": False, "error": f"timed out waiting for {version}",
                        "first_seen": first_seen, "target_seen": target_seen, "last": last,
                        "expected": expected}
            time.sleep(0.02)
        return {"first_seen": first_seen, "target_seen": target_seen, "polls": polls,
                "expected": expected}
    finally:
        for ch in channels.values():
            ch.close()


def _request_count(url: str) -> float:
    total = 0.0
    with urllib.request.urlopen(url, timeout=2) as resp:  # a pod's metrics URL
        for line in resp.read().decode().splitlines():
            if line.startswith("deeprec_requests_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def cmd_load(tfs, cmd: dict) -> dict:
    target, seconds = cmd["target"], float(cmd["seconds"])
    stop = threading.Event()
    lock = threading.Lock()
    stats = {"sent": 0, "answered": 0, "failed": 0}
    errors: dict[str, int] = {}
    gaps = [0.0]

    def worker() -> None:
        with channel(target, private=True) as ch:
            request = pb.PredictRequest(signature_name="serving_default")
            encode_array(IDS, request.inputs[SPARSE])
            encode_array(DENSE_VALUES, request.inputs[DENSE])
            fn = ch.unary_unary(DEEPREC + "Predict", request_serializer=pb.PredictRequest.SerializeToString,
                                response_deserializer=pb.PredictResponse.FromString)
            last_ok = time.monotonic()
            while not stop.is_set():
                try:
                    fn(request, timeout=10)
                    now = time.monotonic()
                    with lock:
                        stats["sent"] += 1
                        stats["answered"] += 1
                        gaps[0] = max(gaps[0], now - last_ok)
                    last_ok = now
                except grpc.RpcError as exc:
                    key = f"{exc.code().name}: {exc.details()}"
                    with lock:
                        stats["sent"] += 1
                        stats["failed"] += 1
                        errors[key] = errors.get(key, 0) + 1

    samples: dict[str, list] = {ip: [] for ip in cmd.get("metrics", [])}

    stop_file = cmd.get("stop_file")
    deadline = time.monotonic() + seconds

    def sampler() -> None:
        while not stop.is_set():
            if time.monotonic() > deadline or (stop_file and os.path.exists(stop_file)):
                stop.set()
            for ip in samples:
                try:
                    samples[ip].append([time.time(), _request_count(f"http://{ip}:8501/metrics")])
                except OSError as exc:
                    samples[ip].append([time.time(), f"{type(exc).__name__}: {exc}"])
            stop.wait(0.25)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(int(cmd.get("channels", 8)))]
    threads.append(threading.Thread(target=sampler, daemon=True))
    started = time.time()
    for t in threads:
        t.start()
    emit({"event": "loading", "t": started})
    stop.wait()
    for t in threads:
        t.join(timeout=15)
    return {**stats, "errors": errors, "max_gap_s": round(gaps[0], 3), "seconds": time.time() - started,
            "metrics": samples}


def cmd_http(tfs, cmd: dict) -> dict:
    with urllib.request.urlopen(cmd["url"], timeout=5) as resp:  # a pod's metrics URL
        return {"status": resp.status, "body": resp.read().decode()}


def _code(fn) -> str:
    try:
        fn()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def cmd_codes(tfs, cmd: dict) -> dict:
    out = {}
    for name, auth in cmd["variants"].items():
        with channel(cmd["addr"], auth=auth) as ch:
            out[name] = {"deeprec_info": _code(lambda: model_info(ch)),
                         "deeprec_predict": _code(lambda: deeprec_predict(ch)),
                         "tfs_predict": _code(lambda: tfs.predict(ch))}
    return {"codes": out}


def cmd_health(tfs, cmd: dict) -> dict:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with channel(cmd["addr"]) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status),
                "deeprec_info": _code(lambda: model_info(ch))}


COMMANDS = {"info": cmd_info, "predict": cmd_predict, "watch": cmd_watch, "load": cmd_load, "http": cmd_http,
            "codes": cmd_codes, "health": cmd_health}


class LazyTfs:
    """TensorFlow loads (seconds, hundreds of MB) only in a session that calls TF Serving."""

    def __init__(self) -> None:
        self._tfs: Tfs | None = None

    def __getattr__(self, name: str):
        if self._tfs is None:
            self._tfs = Tfs()
        return getattr(self._tfs, name)


def main() -> int:
    tfs = LazyTfs()
    emit({"event": "ready"})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            result = COMMANDS[cmd["op"]](tfs, cmd)
            emit({"ok": True, **result})
        except Exception as exc:  # noqa: BLE001  # reported to the test, which fails with it
            emit({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
