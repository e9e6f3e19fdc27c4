"""`deeprec-operator`: runs the operator with the current kubeconfig, watching some namespaces or all."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import kopf

from deeprec_operator.environment import RUNTIME_IMAGE_ENV


class _QuietRoutine(logging.Filter):
    """Drops kopf's per-run success line of the pod watcher.

    It fires on every pod event; failures still get through.
    """

    _ROUTINE = ("Handler 'pod_event' succeeded.",)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self._ROUTINE


def ensure_identity() -> None:
    """Gives kopf a name for this operator when the process has no login name.

    kopf names itself after getpass.getuser() unless POD_ID is set, and a uid without a passwd
    entry (the image runs as 10001, which has none) makes that raise KeyError: the operator pod
    crash-loops on a real node. POD_ID is kopf's own setting for this name.
    """
    if os.environ.get("POD_ID"):
        return
    try:
        getpass.getuser()
    except (KeyError, OSError):
        os.environ["POD_ID"] = f"deeprec-operator-uid{os.getuid()}@{socket.gethostname()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deeprec-operator",
        description="Reconciles DeepRecModel resources (serving.deeprec.io/v1alpha1) into runtime pods.")
    parser.add_argument("-n", "--namespace", action="append", default=[], dest="namespaces",
                        help="namespace to watch; repeat for several; none means every namespace")
    parser.add_argument("--liveness-port", type=int, default=None,
                        help="serve /healthz on this port (for the Deployment's liveness probe)")
    parser.add_argument("--log-format", choices=("plain", "json"), default="plain")
    parser.add_argument("--runtime-image", default=os.environ.get(RUNTIME_IMAGE_ENV, ""),
                        help=f"runtime image for models without spec.image (env {RUNTIME_IMAGE_ENV})")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None, *, wrap_client: Callable[[Any], Any] | None = None) -> int:
    """`wrap_client` wraps the API client the operator writes with (tests inject faults there)."""
    from deeprec_api import redact

    # Before anything logs: a URL with a password in it is masked in every line, kopf's included.
    redact.install()
    args = build_parser().parse_args(argv)
    kopf.configure(verbose=args.verbose,
                   log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL)

    if not args.verbose:
        logging.getLogger("kopf.objects").addFilter(_QuietRoutine())

    from deeprec_operator import handlers  # noqa: F401  (registers the handlers)
    from deeprec_operator.kube import Kube, load_configuration
    from deeprec_operator.probe import Prober

    try:
        kube = Kube(load_configuration())
    except Exception as e:  # noqa: BLE001 (no kubeconfig and not in a cluster: say so, no traceback)
        print(f"deeprec-operator: no Kubernetes credentials: {e}", file=sys.stderr)
        return 2
    if wrap_client is not None:
        kube = wrap_client(kube)
    memo = kopf.Memo(kube=kube, prober=Prober(), default_image=args.runtime_image)
    ensure_identity()
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    logging.getLogger(__name__).info("watching %s", ", ".join(args.namespaces) or "all namespaces")
    asyncio.run(kopf.operator(
        namespaces=args.namespaces,
        clusterwide=not args.namespaces,
        standalone=True,
        liveness_endpoint=liveness,
        memo=memo,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
