"""Asks each runtime pod what it serves: GetServingModelInfo over gRPC.

The operator's status must say what replicas actually serve, not what was asked of them, so it
calls every ready pod. Addresses come from a template (env DEEPREC_OPERATOR_POD_ADDRESS_TEMPLATE,
default `{pod_ip}:{port}`; also `{pod_name}` and `{namespace}`) so tests can route pods to local
processes. Channels are cached per address and credentials: a model polled every few seconds keeps
its connections open, and rotated certificates get a new channel.

A secured model is probed over TLS, trusting only the model's CA and checking the certificate for
the model's server name (default `<name>.<namespace>.svc`: pods are dialled by IP, which no
certificate names, so the name is set with gRPC's target-name override); under mutual TLS the
operator presents its client certificate; with tokens it sends `authorization: Bearer ...`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from deeprec_api import predict_pb2
from deeprec_api.service import MODEL_INFO_METHOD
from deeprec_operator.credentials import PLAINTEXT, ProbeCredentials
from deeprec_operator.pods import PodView
from deeprec_operator.status import PodReport

ADDRESS_TEMPLATE_ENV = "DEEPREC_OPERATOR_POD_ADDRESS_TEMPLATE"
DEFAULT_ADDRESS_TEMPLATE = "{pod_ip}:{port}"
METHOD = MODEL_INFO_METHOD


@dataclass(frozen=True)
class ServingInfo:
    version: str
    target_version: str
    last_update_error: str


class ProbeError(Exception):
    """The runtime did not answer; the message is safe for status (a gRPC code and detail)."""


def address(ip: str, name: str, namespace: str, port: int, template: str | None = None) -> str | None:
    """Where to dial a pod, from the address template; None while the template needs an IP the
    pod does not have yet."""
    template = template or os.environ.get(ADDRESS_TEMPLATE_ENV) or DEFAULT_ADDRESS_TEMPLATE
    if "{pod_ip}" in template and not ip:
        return None
    return template.format(pod_ip=ip, port=port, pod_name=name, namespace=namespace)


def pod_address(pod: Mapping[str, Any], port: int, template: str | None = None) -> str | None:
    meta = pod.get("metadata") or {}
    return address((pod.get("status") or {}).get("podIP") or "", meta.get("name", ""),
                   meta.get("namespace", ""), port, template)


#: A channel nobody used for this long is closed: its pod went away, or its credentials rotated.
IDLE_CHANNEL_SECONDS = 60.0


class Prober:
    """Calls GetServingModelInfo on many pods at once, reusing one channel per address and credentials."""

    def __init__(self, timeout: float = 1.0, workers: int = 32) -> None:
        self._timeout = timeout
        self._channels: dict[tuple[str, str], tuple[grpc.Channel, float]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")

    def _channel(self, address: str, credentials: ProbeCredentials) -> grpc.Channel:
        key = (address, credentials.fingerprint())
        with self._lock:
            entry = self._channels.get(key)
            channel = entry[0] if entry is not None else _open_channel(address, credentials)
            self._channels[key] = (channel, time.monotonic())
            return channel

    def info(self, address: str, credentials: ProbeCredentials = PLAINTEXT) -> ServingInfo:
        call = self._channel(address, credentials).unary_unary(
            METHOD,
            request_serializer=predict_pb2.ServingModelInfoRequest.SerializeToString,
            response_deserializer=predict_pb2.ServingModelInfo.FromString,
        )
        metadata = [("authorization", f"Bearer {credentials.token}")] if credentials.token else None
        try:
            reply = call(predict_pb2.ServingModelInfoRequest(), timeout=self._timeout, metadata=metadata)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") and e.code() else "UNKNOWN"
            detail = e.details() if hasattr(e, "details") else ""
            raise ProbeError(f"{code}: {detail}"[:300]) from None
        return ServingInfo(reply.version, reply.target_version, reply.last_update_error)

    def info_many(self, addresses: Sequence[str | None],
                  credentials: ProbeCredentials = PLAINTEXT) -> list[ServingInfo | ProbeError]:
        def one(address: str | None) -> ServingInfo | ProbeError:
            if address is None:
                return ProbeError("pod has no IP yet")
            try:
                return self.info(address, credentials)
            except ProbeError as e:
                return e
        return list(self._pool.map(one, addresses))

    def sweep(self, idle_seconds: float = IDLE_CHANNEL_SECONDS) -> int:
        """Closes channels unused for idle_seconds; returns how many. (Per model, a poll only knows
        its own pods, so closing by address would close the other models' channels.)"""
        cutoff = time.monotonic() - idle_seconds
        with self._lock:
            stale = [k for k, (_, used) in self._channels.items() if used <= cutoff]
            for key in stale:
                self._channels.pop(key)[0].close()
        return len(stale)

    def close(self) -> None:
        self.sweep(idle_seconds=-1.0)
        self._pool.shutdown(wait=False)


def report_pods(prober: Prober, pods: Sequence[PodView], port: int,
                credentials: ProbeCredentials | ProbeError = PLAINTEXT) -> list[PodReport]:
    """Each pod as status needs it: ready pods are asked GetServingModelInfo (all at once); a
    ProbeError for `credentials` (a Secret the probe cannot read) stands for every answer."""
    ready = [p for p in pods if p.ready]
    addresses = [address(p.ip, p.name, p.namespace, port) for p in ready]
    answers: list[ServingInfo | ProbeError] = (
        [credentials] * len(ready) if isinstance(credentials, ProbeError)
        else prober.info_many(addresses, credentials))
    by_name = {p.name: a for p, a in zip(ready, answers, strict=True)}
    prober.sweep()
    reports = []
    for pod in pods:
        answer = by_name.get(pod.name)
        base = PodReport(name=pod.name, ready=pod.name in by_name, annotated_target=pod.target)
        if answer is None:
            reports.append(base)
        elif isinstance(answer, ProbeError):
            reports.append(dataclasses.replace(base, probe_error=str(answer)))
        else:
            reports.append(dataclasses.replace(
                base, reachable=True, served_version=answer.version, runtime_target=answer.target_version,
                last_update_error=answer.last_update_error))
    return reports


def _open_channel(address: str, credentials: ProbeCredentials) -> grpc.Channel:
    options: list[tuple[str, Any]] = [] if address.startswith("unix:") else [("grpc.enable_http_proxy", 0)]
    if not credentials.tls:
        return grpc.insecure_channel(address, options=options or None)
    channel_credentials = grpc.ssl_channel_credentials(
        root_certificates=credentials.root_ca,
        private_key=credentials.client_key,
        certificate_chain=credentials.client_certificate,
    )
    if credentials.server_name:
        options.append(("grpc.ssl_target_name_override", credentials.server_name))
    return grpc.secure_channel(address, channel_credentials, options=options or None)
