"""Tests on the real pieces: TensorFlow, gRPC and HTTP over loopback, redis-server, the OSS and HDFS
doubles, the C API, the training-side writers, and the operator against real processes."""
