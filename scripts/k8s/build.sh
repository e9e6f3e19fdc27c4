#!/usr/bin/env bash
# Builds the control-plane binaries into "$K8S_BIN" at pinned versions.
# Sourced by scripts/k8s-plane.sh (which sets the variables below); not run directly.
#
# Everything comes from the Go module proxy: no git clones, no release downloads.
# The Go module and build caches ($(go env GOMODCACHE), $(go env GOCACHE)) are reused by
# later builds on the same machine; the stamp file makes a complete cache a no-op.

k8s_build() {
  local go=${GO:-}
  if [[ -z $go ]]; then
    if command -v go >/dev/null 2>&1; then go=$(command -v go); else go=/usr/local/go/bin/go; fi
  fi
  [[ -x $go ]] || die "go not found (set GO=/path/to/go)"

  if k8s_cache_complete; then
    log "cache complete at $K8S_CACHE (stamp: $(tr '\n' ' ' <"$K8S_STAMP")); nothing to build"
    return 0
  fi

  local t0=$SECONDS t
  mkdir -p "$K8S_BIN" "$K8S_CACHE/src"
  rm -f "$K8S_STAMP"
  # GOFLAGS from the caller (e.g. -mod=vendor) would break module-mode builds.
  export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 GOFLAGS=
  local src=$K8S_CACHE/src

  # --- Kubernetes: the module zip lacks the staging modules its go.mod replaces; point the
  # replacements at the published staging versions (v0.MINOR.PATCH) instead.
  t=$SECONDS
  local kdir
  kdir=$("$go" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $kdir ]] || die "go mod download k8s.io/kubernetes@$K8S_VERSION failed"
  log "downloaded k8s.io/kubernetes@$K8S_VERSION in $((SECONDS - t))s"
  local kwork=$src/kubernetes
  if [[ ! -f $kwork/.rewritten-$K8S_VERSION ]]; then
    rm -rf "$kwork"
    cp -r "$kdir" "$kwork"
    chmod -R u+w "$kwork"
    rm -f "$kwork/go.work" "$kwork/go.work.sum"
    local staging=v0.${K8S_VERSION#v1.}
    sed -i -E "s#^([[:space:]]*)(k8s\.io/[A-Za-z0-9._/-]+) => \./staging/src/k8s\.io/[A-Za-z0-9._/-]+#\1\2 => \2 $staging#" "$kwork/go.mod"
    if grep -q '=> ./staging' "$kwork/go.mod"; then die "staging replace rewrite left local paths in go.mod"; fi
    touch "$kwork/.rewritten-$K8S_VERSION"
  fi
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local kflags="-s -w"
  kflags+=" -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  kflags+=" -X k8s.io/component-base/version.gitMajor=1"
  kflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
  kflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  kflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  kflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
  kflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  t=$SECONDS
  (cd "$kwork" && GOFLAGS=-mod=mod "$go" build -trimpath -ldflags "$kflags" -o "$K8S_BIN/" \
      ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubectl \
      ./cmd/kubelet ./cmd/kube-proxy) \
    || die "building Kubernetes binaries failed"
  log "built kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy in $((SECONDS - t))s"

  # --- etcd: the server module has no installable main; scripts/k8s/etcd is a one-line main
  # calling etcdmain.Main, with go.mod/go.sum pinning etcd and its dependencies.
  t=$SECONDS
  grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$SCRIPT_DIR/k8s/etcd/go.mod" \
    || die "scripts/k8s/etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  (cd "$SCRIPT_DIR/k8s/etcd" && "$go" build -trimpath -ldflags "-s -w" -o "$K8S_BIN/etcd" .) \
    || die "building etcd failed"
  log "built etcd $ETCD_VERSION in $((SECONDS - t))s"

  # --- kwok and helm install as they are.
  t=$SECONDS
  GOBIN=$K8S_BIN "$go" install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" || die "building kwok failed"
  log "built kwok $KWOK_VERSION in $((SECONDS - t))s"
  t=$SECONDS
  GOBIN=$K8S_BIN "$go" install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || die "building helm failed"
  log "built helm $HELM_VERSION in $((SECONDS - t))s"

  # --- kwok stages: kwok refuses to start without them; its module ships them.
  local kwokdir
  kwokdir=$("$go" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  local st=$kwokdir/kustomize/stage stages=()
  stages+=("$st/node/fast/node-initialize.yaml")
  stages+=("$st"/node/heartbeat-with-lease/*.yaml)
  stages+=("$st/pod/fast/pod-ready.yaml" "$st/pod/fast/pod-complete.yaml" "$st/pod/fast/pod-delete.yaml")
  local f out=$K8S_CACHE/kwok-stages.yaml.tmp
  : >"$out"
  for f in "${stages[@]}"; do
    [[ -f $f ]] || die "kwok stage file missing: $f"
    { echo "---"; echo "# from sigs.k8s.io/kwok@$KWOK_VERSION ${f#"$kwokdir"/}"; sed '/^---[[:space:]]*$/d' "$f"; } >>"$out"
  done
  mv "$out" "$K8S_CACHE/kwok-stages.yaml"

  local b
  for b in "${K8S_BINARIES[@]}"; do [[ -x $K8S_BIN/$b ]] || die "missing after build: $K8S_BIN/$b"; done
  k8s_stamp_text >"$K8S_STAMP"
  log "build complete in $((SECONDS - t0))s; $(du -sh "$K8S_BIN" | cut -f1) of binaries in $K8S_BIN"
}
