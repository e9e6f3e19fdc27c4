#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for end-to-end tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake nodes whose pods kwok reports Running);
# or, with --real-node, the same plane with a real node (containerd, runc, CNI bridge, kubelet
# with the static CPU manager, kube-proxy) in a network namespace of its own, running the images
# of scripts/images.sh.
#
#   scripts/k8s-plane.sh build     build the pinned binaries into the cache (reused when complete)
#   scripts/k8s-plane.sh up DIR [--owner-pid PID] [--real-node]
#                                  start a plane; writes DIR/kubeconfig and DIR/env; with
#                                  --owner-pid, the plane stops itself when PID exits; with
#                                  --real-node, DIR/bin has kubectl and helm for it (root only)
#   scripts/k8s-plane.sh down DIR  stop the plane started in DIR (a real node: its containers,
#                                  mounts, cgroups and network namespace too)
#   scripts/k8s-plane.sh restart-apiserver DIR [--down-seconds N] [--kill]
#                                  stop kube-apiserver (SIGTERM, or SIGKILL with --kill), wait
#                                  N s (default 0), start it again with the same flags
#   scripts/k8s-plane.sh env       print the cache's bin folder
#
# Cache: ${DEEPREC_K8S_CACHE:-$HOME/.cache/deeprec-serving/k8s-v1.34.4}
set -euo pipefail

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
K8S_CACHE=${DEEPREC_K8S_CACHE:-$HOME/.cache/deeprec-serving/k8s-$K8S_VERSION}
K8S_BIN=$K8S_CACHE/bin
K8S_STAMP=$K8S_CACHE/stamp
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd kwok helm)
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf '[k8s-plane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

k8s_stamp_text() {
  # Bump the last line when the build recipe changes in a way that needs a rebuild.
  printf 'kubernetes=%s\netcd=%s\nkwok=%s\nhelm=%s\nrecipe=2\n' \
    "$K8S_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$HELM_VERSION"
}

k8s_cache_complete() {
  [[ -f $K8S_STAMP && -f $K8S_CACHE/kwok-stages.yaml ]] || return 1
  [[ "$(cat "$K8S_STAMP")" == "$(k8s_stamp_text)" ]] || return 1
  local b
  for b in "${K8S_BINARIES[@]}"; do [[ -x $K8S_BIN/$b ]] || return 1; done
}

# shellcheck source=scripts/k8s/build.sh
source "$SCRIPT_DIR/k8s/build.sh"
# shellcheck source=scripts/k8s/plane.sh
source "$SCRIPT_DIR/k8s/plane.sh"
# shellcheck source=scripts/k8s/node.sh
source "$SCRIPT_DIR/k8s/node.sh"

usage() { sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

main() {
  local cmd=${1:-}
  case $cmd in
    build) k8s_build ;;
    up) shift; plane_up "$@" ;;
    down) shift; plane_down "$@" ;;
    restart-apiserver) shift; plane_restart_apiserver "$@" ;;
    _watch) shift; plane_watch "$@" ;;
    env) echo "$K8S_BIN" ;;
    -h|--help|help|"") usage ;;
    *) usage; exit 2 ;;
  esac
}

main "$@"
