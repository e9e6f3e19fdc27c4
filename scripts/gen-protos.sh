#!/usr/bin/env bash
# Regenerates runtime/deeprec_runtime/protos/*_pb2.py from proto/. tests/runtime/test_protos_current.py proves the
# checked-in files match this script's output.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/runtime/protos}"
py="${PYTHON:-$here/.venv/bin/python}"
"$py" -m grpc_tools.protoc -I "$here/proto" --python_out="$out" --pyi_out="$out" \
  "$here/proto/deeprec/serving/predict.proto"
# protoc mirrors the proto's folder; the runtime imports the module flat.
mv "$out/deeprec/serving/predict_pb2.py" "$out/predict_pb2.py"
mv "$out/deeprec/serving/predict_pb2.pyi" "$out/predict_pb2.pyi"
rm -rf "$out/deeprec"
