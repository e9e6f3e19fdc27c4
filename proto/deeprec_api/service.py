"""The gRPC names of deeprec.serving.PredictionService, read from the generated descriptor so they
cannot drift from proto/deeprec/serving/predict.proto."""

from __future__ import annotations

from deeprec_api import predict_pb2

#: `deeprec.serving.PredictionService`
PREDICTION_SERVICE: str = predict_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
#: `/deeprec.serving.PredictionService/Predict`, as a gRPC method path.
PREDICT_METHOD = f"/{PREDICTION_SERVICE}/Predict"
#: `/deeprec.serving.PredictionService/GetServingModelInfo`: what the operator asks every pod.
MODEL_INFO_METHOD = f"/{PREDICTION_SERVICE}/GetServingModelInfo"
