"""REST adapter: TF Serving's REST API, Simple TensorFlow Serving's JSON API and /metrics."""

from deeprec_runtime.server.rest.server import RestServer

__all__ = ["RestServer"]
