"""How the runtime pods are reached: the Service, and the NetworkPolicy that limits who may."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from deeprec_api.pod import GRPC_PORT, HTTP_PORT
from deeprec_operator.resources.names import common_labels, selector_labels
from deeprec_operator.spec import ModelSpec


def service(spec: ModelSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": common_labels(spec)},
        "spec": {
            "type": spec.service.type,
            "selector": selector_labels(spec.name),
            "ports": [
                {"name": "grpc", "port": spec.service.grpc_port, "targetPort": GRPC_PORT,
                 "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
                {"name": "http", "port": spec.service.http_port, "targetPort": HTTP_PORT,
                 "protocol": "TCP", "appProtocol": "http"},
            ],
        },
    }


def network_policy(spec: ModelSpec, operator_peer: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Ingress to the runtime pods only from the allowed clients and the operator (its status
    probe), on the gRPC and HTTP ports; None when the model asks for no policy.

    Kubelet probes are not subject to NetworkPolicy on the usual network plugins (they come from
    the node), so they need no rule here.
    """
    policy = spec.security.network_policy
    if policy is None:
        return None
    peers = [copy.deepcopy(dict(p)) for p in policy.allowed_clients]
    if operator_peer:
        peers.append(copy.deepcopy(dict(operator_peer)))
    ingress: dict[str, Any] = {"ports": [{"port": GRPC_PORT, "protocol": "TCP"},
                                         {"port": HTTP_PORT, "protocol": "TCP"}]}
    if peers:
        ingress["from"] = peers
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": common_labels(spec)},
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec.name)},
            "policyTypes": ["Ingress"],
            # No peer at all would be an empty `from`, which NetworkPolicy reads as "anyone":
            # without allowed clients and an operator peer, nothing is admitted.
            "ingress": [ingress] if peers else [],
        },
    }


def operator_peer(namespace: str, pod_labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The operator's pods as a NetworkPolicyPeer, or None when the operator does not know where it
    runs (outside a cluster)."""
    if not namespace or not pod_labels:
        return None
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": dict(pod_labels)}}
