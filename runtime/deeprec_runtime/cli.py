"""`deeprec-runtime`: serve a model, run the demo, locate the C API."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading

from deeprec_api.pod import ANNOTATIONS_FILE, GRPC_PORT, TARGET_VERSION_ANNOTATION


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _serve_parser(sub) -> None:
    from deeprec_runtime.server.grpc_server import MAX_CONNECTION_AGE_SECONDS

    p = sub.add_parser("serve", help="serve the model a DeepRec model_config JSON describes")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="path of the model_config JSON file (one model, named "
                       "--model-name)")
    which.add_argument("--model-config-list", help="JSON/YAML file listing several models: "
                       '{"model_config_list": [{"name": ..., "model_config": path or object}]}; '
                       "the first is the default model (docs/apis.md)")
    p.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    p.add_argument("--http-port", type=int, default=0,
                   help="REST (TF Serving and Simple TensorFlow Serving) and /metrics port; "
                        "0 disables HTTP")
    p.add_argument("--max-connection-age-seconds", type=float, default=MAX_CONNECTION_AGE_SECONDS,
                   help="close each gRPC connection gracefully after this long (its calls finish, "
                        "the client reconnects): behind a Service ClusterIP that is how clients "
                        "leave a draining pod and reach new ones; 0: never")
    p.add_argument("--health-port", type=int, default=None,
                   help="also answer grpc.health.v1.Health, and nothing else, in plaintext on "
                        "this port: for kubelet gRPC probes when the gRPC port needs TLS")
    p.add_argument("--host", default="[::]", help="address to bind (default: all)")
    p.add_argument("--annotations-file", default=ANNOTATIONS_FILE,
                   help=f"Downward API annotations file carrying {TARGET_VERSION_ANNOTATION}")
    p.add_argument("--model-name", default="default")
    p.add_argument("--drain-seconds", type=float, default=3.0,
                   help="on SIGTERM, health turns NOT_SERVING and requests are still served "
                        "until none has arrived for this long (clients stop sending)")
    p.add_argument("--grace-seconds", type=float, default=20.0,
                   help="upper bound on the whole shutdown")
    p.add_argument("--workers", type=int, default=None,
                   help="gRPC worker threads (default: 2 per CPU this process may use, at least "
                        "4; with batching, enough to fill a batch while others run)")
    p.add_argument("--max-concurrent-requests", type=int, default=None,
                   help="gRPC calls in progress, running or queued, before more are answered "
                        "RESOURCE_EXHAUSTED at once (default: 4 x --workers, at least 64; "
                        "0: no limit)")
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024,
                   help="largest gRPC request or response and REST body; larger ones are "
                        "answered RESOURCE_EXHAUSTED (REST: 413) (default 64 MiB). Also bounds "
                        "one request's decoded input tensors and a merged batch")
    p.add_argument("--max-inflight-bytes", type=_non_negative_int, default=1 << 30,
                   help="request bytes in progress (gRPC and REST) past which a call is answered "
                        "RESOURCE_EXHAUSTED (REST: 429) at once (default 1 GiB; 0: no limit)")
    p.add_argument("--http-read-timeout", type=_positive_float, default=30.0,
                   help="seconds a REST request's headers and body have to arrive, from its "
                        "first byte (default 30); slower ones are dropped (body: 408)")
    p.add_argument("--grpc-server", choices=("auto", "python", "native"), default="auto",
                   help="gRPC server: native (gRPC C++ calling the same handlers, less CPU per "
                        "request; health always open; built on first use with g++ and "
                        "libgrpc++-dev), python (grpcio's; every option) or auto (default: "
                        "native unless --auth-protect-health is set or it cannot be built). "
                        "See docs/performance.md")
    p.add_argument("--fast-predict", choices=("on", "off"), default="on",
                   help="with the native gRPC server, answer DeepRec Predict calls in C++ when "
                        "the serving version allows it (default on; see docs/performance.md)")
    _security_flags(p)
    p.add_argument("--log-level", default="INFO")


def _security_flags(p) -> None:
    # Each flag also reads an environment variable (runtime/deeprec_runtime/security.py FILE_ENVS); the bearer
    # token itself only from DEEPREC_AUTH_TOKEN, so it never shows in `ps` or in the config file.
    g = p.add_argument_group("security (TLS and authentication, both ports)")
    g.add_argument("--tls-cert", help="PEM certificate chain; with --tls-key serves TLS")
    g.add_argument("--tls-key", help="PEM private key of --tls-cert")
    g.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates (mTLS)")
    g.add_argument("--auth-token-file", help="accepted bearer tokens, one per line "
                   "(also: env DEEPREC_AUTH_TOKEN holds one token)")
    g.add_argument("--basic-auth-file", help="accepted user:password lines (HTTP Basic)")
    g.add_argument("--auth-protect-health", action="store_true",
                   help="require credentials on health checks too (default: open for probes)")
    g.add_argument("--auth-protect-metrics", action="store_true",
                   help="require credentials on /metrics too (default: open for scrapers)")


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="build a small recommendation model, serve it and update it live")
    p.add_argument("--dir", default="", help="where to write the model (default: a temp folder)")
    p.add_argument("--duration", type=float, default=25.0, help="seconds to run")
    p.add_argument("--grpc-port", type=int, default=0, help="port (0 = any free port)")
    p.add_argument("--num-ids", type=int, default=100_000)
    p.add_argument("--log-level", default="WARNING")


def _say(line: str) -> None:
    """One line on stdout in one write: print() writes the text and its newline separately when
    stdout is unbuffered (PYTHONUNBUFFERED, as in containers), and a log line from another
    thread can land between them, breaking the line that scripts and tests read the ports from."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up banners (oneDNN, CPU features) are noise in a server's log; an
    # explicit TF_CPP_MIN_LOG_LEVEL still wins. Must be set before TensorFlow is imported.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="deeprec-runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _demo_parser(sub)
    sub.add_parser("capi-path", help="print the path of libserving_processor.so (the DeepRec "
                                     "Processor C API), building it on first use")
    sub.add_parser("capi-include", help="print the folder holding processor.h")
    sub.add_parser("native-path", help="print the paths of the native gRPC front end library "
                                       "(--grpc-server native) and of the fast predict library, "
                                       "building them on first use")
    args = parser.parse_args(argv)
    if args.command.startswith("capi-"):
        return capi(args.command)
    if args.command == "native-path":
        return native_path()
    from deeprec_api import redact

    redact.install()  # a password inside a URL (redis_url, an exception quoting one) never logged
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return serve(args)
    if args.command == "demo":
        from deeprec_runtime.demo import run_demo  # TensorFlow-heavy

        return run_demo(args)
    return 2


def _print_built(library_path, build_error: type[Exception], what: str) -> int:
    """Prints a library's path, building it first if needed; 1 with the reason when it cannot."""
    try:
        print(library_path())
    except build_error as exc:
        print(f"deeprec-runtime: cannot build {what}: {exc}", file=sys.stderr)
        return 1
    return 0


def capi(command: str) -> int:
    from deeprec_runtime.capi import BuildError, include_dir, library_path

    if command == "capi-include":
        print(include_dir())
        return 0
    return _print_built(library_path, BuildError, "the C API library")


def native_path() -> int:
    from deeprec_runtime.deeprec import kernels
    from deeprec_runtime.native.build import BuildError, fast_predict_path, library_path

    failed = (_print_built(library_path, BuildError, "the native gRPC front end")
              or _print_built(fast_predict_path, BuildError, "the fast predict library")
              or _print_built(kernels.library_path, BuildError,
                              "the EmbeddingVariable op library"))
    if failed:
        return failed
    from deeprec_runtime.native.fast_predict import check_session_handle
    from deeprec_runtime.native.tf_handles import SessionHandleError

    try:  # the fast path must reach this TensorFlow's sessions, or the build is wrong
        check_session_handle()
    except SessionHandleError as exc:
        print(f"deeprec-runtime: the fast predict library cannot reach TensorFlow's sessions: "
              f"{exc}", file=sys.stderr)
        return 1
    if kernels.library() is None:  # its ops must register in this TensorFlow
        print("deeprec-runtime: TensorFlow cannot load the EmbeddingVariable op library (the "
              "warning above says why)", file=sys.stderr)
        return 1
    return 0


def serve(args) -> int:
    import faulthandler

    if sys.__stderr__ is not None:  # None when started without a stderr
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__)  # `kill -USR1`: every stack
    from deeprec_runtime.app import Runtime
    from deeprec_runtime.config import load_model_config
    from deeprec_runtime.errors import ConfigError
    from deeprec_runtime.models import load_model_config_list
    from deeprec_runtime.native.build import BuildError as NativeBuildError

    try:
        models = load_model_config_list(args.model_config_list) if args.model_config_list else None
        config = models[0].config if models else load_model_config(args.config)
    except ConfigError as exc:
        print(f"deeprec-runtime: invalid configuration: {exc}", file=sys.stderr)
        return 2
    from deeprec_runtime.threadenv import export_thread_env

    export_thread_env(config)  # OMP_NUM_THREADS / KMP_BLOCKTIME before TensorFlow's first session
    from deeprec_runtime.security import Security, SecurityConfigError, security_config_from

    # Everything imported so far (TensorFlow, gRPC, protobuf: ~280k objects) lives as long as
    # the process: moved out of the collector's view, a full collection no longer walks them
    # (138 ms with the GIL held, measured on the shared 2-core machine; ~0 ms once frozen).
    # Objects created later (model versions, which do get freed) are collected as before.
    gc.freeze()
    try:
        security = Security(security_config_from(args))
        runtime = Runtime(config, grpc_port=args.grpc_port, http_port=args.http_port or None,
                          host=args.host, annotations_file=args.annotations_file,
                          model_name=args.model_name, workers=args.workers, security=security,
                          models=models, max_concurrent_requests=args.max_concurrent_requests,
                          max_message_bytes=args.max_message_bytes, grpc_server=args.grpc_server,
                          fast_predict=args.fast_predict == "on", health_port=args.health_port,
                          max_inflight_bytes=args.max_inflight_bytes,
                          http_read_timeout=args.http_read_timeout,
                          max_connection_age=args.max_connection_age_seconds)
    except (ConfigError, SecurityConfigError) as exc:  # e.g. custom_op_paths, --tls-key
        print(f"deeprec-runtime: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except NativeBuildError as exc:
        print(f"deeprec-runtime: --grpc-server native: cannot build the native gRPC front end: "
              f"{exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port that is taken
        print(f"deeprec-runtime: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runtime.start()
    _say(f"deeprec-runtime: gRPC on port {runtime.grpc_port}"
         + (f", HTTP on port {runtime.http_port}" if runtime.http else ""))
    if runtime.health:
        _say(f"deeprec-runtime: plaintext health on port {runtime.health.port}")
    # A timed wait: the kernel may deliver SIGTERM to any of TensorFlow's or gRPC's threads, and
    # Python runs its handler only when the main thread wakes up to look.
    while not stop.wait(0.2):
        pass
    runtime.stop(args.grace_seconds, args.drain_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
