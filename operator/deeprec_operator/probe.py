"""Asks each runtime pod what it serves: GetServingModelInfo over gRPC.

The operator's status must say what replicas actually serve, not what was asked of them, so it
calls every ready pod. Addresses come from a template (env DEEPREC_OPERATOR_POD_ADDRESS_TEMPLATE,
default `{pod_ip}:{port}`; also `{pod_name}` and `{namespace}`) so tests can route pods to local
processes. Channels are cached per address: a model polled every few seconds keeps its
connections open.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from deeprec_runtime.protos import predict_pb2

ADDRESS_TEMPLATE_ENV = "DEEPREC_OPERATOR_POD_ADDRESS_TEMPLATE"
DEFAULT_ADDRESS_TEMPLATE = "{pod_ip}:{port}"
METHOD = "/deeprec.serving.PredictionService/GetServingModelInfo"


@dataclass(frozen=True)
class ServingInfo:
    version: str
    target_version: str
    last_update_error: str


class ProbeError(Exception):
    """The runtime did not answer; the message is safe for status (a gRPC code and detail)."""


def pod_address(pod: Mapping[str, Any], port: int, template: str | None = None) -> str | None:
    template = template or os.environ.get(ADDRESS_TEMPLATE_ENV) or DEFAULT_ADDRESS_TEMPLATE
    meta = pod.get("metadata") or {}
    pod_ip = (pod.get("status") or {}).get("podIP") or ""
    if "{pod_ip}" in template and not pod_ip:
        return None
    return template.format(pod_ip=pod_ip, port=port, pod_name=meta.get("name", ""),
                           namespace=meta.get("namespace", ""))


class Prober:
    """Calls GetServingModelInfo on many pods at once, reusing one channel per address."""

    def __init__(self, timeout: float = 1.0, workers: int = 32) -> None:
        self._timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                if address.startswith("unix:"):
                    channel = grpc.insecure_channel(address)
                else:
                    channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
                self._channels[address] = channel
            return channel

    def info(self, address: str) -> ServingInfo:
        call = self._channel(address).unary_unary(
            METHOD,
            request_serializer=predict_pb2.ServingModelInfoRequest.SerializeToString,
            response_deserializer=predict_pb2.ServingModelInfo.FromString,
        )
        try:
            reply = call(predict_pb2.ServingModelInfoRequest(), timeout=self._timeout)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") and e.code() else "UNKNOWN"
            detail = e.details() if hasattr(e, "details") else ""
            raise ProbeError(f"{code}: {detail}"[:300]) from None
        return ServingInfo(reply.version, reply.target_version, reply.last_update_error)

    def info_many(self, addresses: Sequence[str | None]) -> list[ServingInfo | ProbeError]:
        def one(address: str | None) -> ServingInfo | ProbeError:
            if address is None:
                return ProbeError("pod has no IP yet")
            try:
                return self.info(address)
            except ProbeError as e:
                return e
        return list(self._pool.map(one, addresses))

    def forget_except(self, keep: set[str]) -> None:
        """Closes channels of addresses no pod has any more (pods come and go with new IPs)."""
        with self._lock:
            for address in [a for a in self._channels if a not in keep]:
                self._channels.pop(address).close()

    def close(self) -> None:
        self.forget_except(set())
        self._pool.shutdown(wait=False)
