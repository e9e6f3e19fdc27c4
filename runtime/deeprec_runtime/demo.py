"""`deeprec-runtime demo`: a recommendation model trained, served and updated live, in one command.

It builds a Wide&Deep-like model (100k x 16 embedding + MLP), writes a SavedModel and a first full
checkpoint, serves it over gRPC on loopback, then keeps training: a delta every few seconds and a
new full version half-way. A client asks for the same three predictions every second, so the
output shows them change as updates land, with the version and delta step that produced them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import grpc
import numpy as np

from deeprec_api import predict_pb2 as pb
from deeprec_api.pod import GRPC_PORT
from deeprec_api.service import MODEL_INFO_METHOD, PREDICT_METHOD
from deeprec_runtime.codec import decode_array, encode_array
from deeprec_runtime.config import parse_model_config


def run_demo(args) -> int:
    from deeprec_runtime.app import Runtime
    from deeprec_runtime.training import write_demo_model

    base = args.dir or tempfile.mkdtemp(prefix="deeprec-demo-")
    if args.dir and os.path.exists(os.path.join(base, "saved_model")):
        shutil.rmtree(base)
    print(f"[demo] training a Wide&Deep model ({args.num_ids} x 16 embedding) in {base}", flush=True)
    art = write_demo_model(base, num_ids=args.num_ids, num_deltas=0)
    config = {
        "savedmodel_dir": art.saved_model_dir,
        "checkpoint_dir": art.checkpoint_dir,
        "signature_name": "serving_default",
        "model_store_type": "local",
        "feature_store_type": "memory",
        "update_poll_seconds": 0.5,
    }
    with open(os.path.join(base, "model_config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    runtime = Runtime(parse_model_config(config), grpc_port=args.grpc_port, host="127.0.0.1",
                      annotations_file=os.path.join(base, "annotations"))
    runtime.start()
    if not runtime.manager.wait_ready(120):
        print(f"[demo] the model did not load: {runtime.manager.last_error}")
        return 1
    print(f"[demo] serving {config['checkpoint_dir']} on 127.0.0.1:{runtime.grpc_port} "
          f"(config: {os.path.join(base, 'model_config.json')})", flush=True)

    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_port}")
    predict = channel.unary_unary(PREDICT_METHOD,
                                  request_serializer=pb.PredictRequest.SerializeToString,
                                  response_deserializer=pb.PredictResponse.FromString)
    info = channel.unary_unary(MODEL_INFO_METHOD,
                               request_serializer=pb.ServingModelInfoRequest.SerializeToString,
                               response_deserializer=pb.ServingModelInfo.FromString)
    feed = art.model.make_feed(3, np.random.default_rng(42))
    # Make the three users' ids ones that training touches, so deltas visibly move them.
    feed["sparse_ids"][:] = art.model.sample_ids(3, np.random.default_rng(7))
    request = pb.PredictRequest(signature_name="serving_default")
    for key, value in feed.items():
        encode_array(value, request.inputs[key])

    started = time.monotonic()
    next_delta = started + 3.0
    full_written = False
    try:
        while time.monotonic() - started < args.duration:
            response = predict(request, timeout=10)
            scores = decode_array(response.outputs["probability"], "probability").ravel()
            state = info(pb.ServingModelInfoRequest(), timeout=10)
            print(f"[demo] t={time.monotonic() - started:5.1f}s  version={state.version} "
                  f"full={state.full_step} delta={state.delta_step}  scores="
                  + " ".join(f"{s:.6f}" for s in scores), flush=True)
            now = time.monotonic()
            if now >= next_delta:
                if not full_written and now - started > args.duration / 2:
                    prefix = art.write_full(steps=20)
                    full_written = True
                    print(f"[demo] trainer wrote a new full version: {prefix}", flush=True)
                else:
                    prefix = art.write_delta(steps=20)
                    print(f"[demo] trainer wrote a delta: {prefix}", flush=True)
                next_delta = now + 3.0
            time.sleep(1.0)
    finally:
        channel.close()
        runtime.stop(2.0)
        art.close()
    print(f"[demo] done. Serve it yourself with:\n  deeprec-runtime serve --config "
          f"{os.path.join(base, 'model_config.json')} --grpc-port {GRPC_PORT}")
    return 0
