"""deeprec_api: what the operator and the runtime agree on, written once.

- `predict_pb2`: the DeepRec-compatible gRPC API (generated from proto/deeprec/serving/predict.proto
  by scripts/gen-protos.sh), and `service`: its service and method names.
- `resource`: the DeepRecModel resource (group, version, plural, kind) and the labels and
  annotations the operator puts on what it creates.
- `pod`: the runtime pod's contract: ports, the target-version annotation and the Downward API file
  it is read from, the environment variables credentials arrive in.
- `redact`: which URLs carry credentials (refused in a spec, masked in every log line).

It imports neither deeprec_runtime nor deeprec_operator nor TensorFlow (.importlinter), so the
operator image needs nothing of the runtime's.
"""
