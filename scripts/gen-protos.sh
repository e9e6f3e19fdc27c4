#!/usr/bin/env bash
# Regenerates proto/deeprec_api/*_pb2.py(i) from proto/deeprec/serving/predict.proto, into OUT
# (default: the package itself). tests/static/api/test_protos_current.py proves the checked-in files
# match this script's output.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/proto/deeprec_api}"
py="${PYTHON:-$here/.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$py" -m grpc_tools.protoc -I "$here/proto" --python_out="$work" --pyi_out="$work" \
  "$here/proto/deeprec/serving/predict.proto"
# protoc mirrors the proto's folder (deeprec/serving/); the package holds the module flat, as
# `deeprec_api.predict_pb2`.
mkdir -p "$out"
mv "$work/deeprec/serving/predict_pb2.py" "$out/predict_pb2.py"
mv "$work/deeprec/serving/predict_pb2.pyi" "$out/predict_pb2.pyi"
