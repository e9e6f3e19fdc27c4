"""GetServingModelInfo over real gRPC on loopback, as the operator calls each runtime pod."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from deeprec_operator.probe import METHOD, ProbeError, Prober, pod_address
from deeprec_runtime.protos import predict_pb2


@pytest.fixture
def runtime_stub():
    """A gRPC server on port 0 that answers GetServingModelInfo like a runtime serving checkpoint_2."""
    def info(request_bytes, context):
        predict_pb2.ServingModelInfoRequest.FromString(request_bytes)
        return predict_pb2.ServingModelInfo(
            model_path="/m", version="checkpoint_2", target_version="checkpoint_2", last_update_error=""
        ).SerializeToString()

    handler = grpc.method_handlers_generic_handler("deeprec.serving.PredictionService", {
        "GetServingModelInfo": grpc.unary_unary_rpc_method_handler(info),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def test_reads_served_version(runtime_stub):
    prober = Prober(timeout=2)
    try:
        info = prober.info(f"127.0.0.1:{runtime_stub}")
    finally:
        prober.close()
    assert (info.version, info.target_version, info.last_update_error) == ("checkpoint_2", "checkpoint_2", "")
    assert METHOD == "/deeprec.serving.PredictionService/GetServingModelInfo"


def test_unreachable_pod_is_an_error_not_an_exception(runtime_stub):
    prober = Prober(timeout=0.5)
    try:
        good, bad, none = prober.info_many([f"127.0.0.1:{runtime_stub}", "127.0.0.1:1", None])
    finally:
        prober.close()
    assert good.version == "checkpoint_2"
    assert isinstance(bad, ProbeError) and "UNAVAILABLE" in str(bad)
    assert isinstance(none, ProbeError)


def test_address_template():
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "status": {"podIP": "10.1.2.3"}}
    assert pod_address(pod, 8500, "{pod_ip}:{port}") == "10.1.2.3:8500"
    assert pod_address(pod, 8500, "unix:///tmp/{namespace}.{pod_name}.sock") == "unix:///tmp/ns.p.sock"
    assert pod_address({"metadata": {"name": "p"}, "status": {}}, 8500, "{pod_ip}:{port}") is None


def test_address_template_from_env(monkeypatch):
    monkeypatch.setenv("DEEPREC_OPERATOR_POD_ADDRESS_TEMPLATE", "127.0.0.1:{port}")
    assert pod_address({"metadata": {"name": "p"}, "status": {}}, 9) == "127.0.0.1:9"
