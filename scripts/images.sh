#!/usr/bin/env bash
# Builds the project's images from the unchanged Dockerfile.runtime and Dockerfile.operator with
# buildah (Debian package, kernel overlay storage), with no registry anywhere: the Dockerfiles'
# base (`FROM python:3.11.11-slim-bookworm`) and the kubelet's pause image are built here too.
#
#   scripts/images.sh build         build what is missing or stale: the base image (from a cached
#                                   root file system tar), pause, operator, runtime
#   scripts/images.sh load SOCKET   stream pause, operator and runtime into the containerd that
#                                   listens on SOCKET (namespace k8s.io, where the kubelet looks)
#   scripts/images.sh files IMAGE   every path in IMAGE's file system, one a line (type, mode, path)
#   scripts/images.sh config IMAGE  IMAGE's OCI configuration (user, entrypoint, env), JSON
#   scripts/images.sh list          the images with their IDs and sizes
#   scripts/images.sh names         NAME=IMAGE lines: base, pause, operator, runtime
#
# Caching: each image is tagged a second time as localhost/deeprec-inputs/NAME:KEY, KEY a hash of
# everything its build reads (the Dockerfile, the files its COPY lines name, the base image's key,
# this script's build recipe); `build` skips an image whose KEY tag exists. The base image's root
# file system is kept as a tar keyed the same way, so a wiped image store costs an import, not a
# debootstrap. PyPI and Debian package versions resolved during a build are not part of a key.
#
# Cache and image store: ${DEEPREC_IMAGE_CACHE:-$HOME/.cache/deeprec-serving/images}
# Needs (Debian): buildah runc debootstrap gcc libc6-dev (the static pause binary); root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMG_CACHE=${DEEPREC_IMAGE_CACHE:-$HOME/.cache/deeprec-serving/images}
STORAGE_ROOT=$IMG_CACHE/storage
RUN_ROOT=/run/deeprec-serving/buildah-$(printf '%s' "$STORAGE_ROOT" | sha256sum | cut -c1-12)
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEEPREC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
K8S_VERSION=v1.34.4
PAUSE_VERSION=3.10.1

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The Dockerfiles stay as users build them: the base image name is read from their ARG.
dockerfile_base() {
  local f img base=""
  for f in Dockerfile.runtime Dockerfile.operator; do
    img=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$REPO/$f")
    [[ -n $img ]] || die "$f has no 'ARG PYTHON_IMAGE=' default"
    [[ -z $base || $base == "$img" ]] || die "the Dockerfiles disagree on the base image ($base vs $img)"
    base=$img
  done
  # A short name as `FROM` resolves it (Docker Hub's library namespace).
  case $base in
    */*/*) echo "$base" ;;
    */*) echo "docker.io/$base" ;;
    *) echo "docker.io/library/$base" ;;
  esac
}

app_version() { sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO/helm/deeprec-serving/Chart.yaml"; }

BASE_IMAGE=$(dockerfile_base)
PAUSE_IMAGE=registry.k8s.io/pause:$PAUSE_VERSION
# The chart's default image names, so that `helm install` with default values runs these images.
OPERATOR_IMAGE=ghcr.io/deeprec-serving/deeprec-operator:$(app_version)
RUNTIME_IMAGE=ghcr.io/deeprec-serving/deeprec-runtime:$(app_version)

bh() {
  buildah --root "$STORAGE_ROOT" --runroot "$RUN_ROOT" --storage-driver overlay \
    --cgroup-manager cgroupfs "$@"
}

image_exists() { bh inspect --type image --format '{{.FromImageID}}' "$1" >/dev/null 2>&1; }
image_id() { bh inspect --type image --format '{{.FromImageID}}' "$1"; }
image_size() { # bytes of the image's layers, uncompressed
  bh images --noheading --format '{{.Size}}' "$1" | head -n1
}

key_of() { sha256sum | cut -c1-16; }

# --- base image ---------------------------------------------------------------------------------
# debootstrap of bookworm with python3, made to behave as the official image where the
# Dockerfiles rely on it: `python` and `pip` on PATH in /usr/local/bin (a virtual environment, so
# `pip install` is allowed as there), a shared libpython with its headers (the C API library is
# compiled against them and embeds it), no compiler and no libc headers. It is Debian's Python
# 3.11.2, not python.org's 3.11.11: the same minor version, fine for integration tests, not a
# byte-for-byte check of the production base.
base_rootfs() { # base_rootfs DIR
  local dir=$1
  debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11,ca-certificates \
    "$DEBIAN_SUITE" "$dir" "$DEBIAN_MIRROR" >"$dir.debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $dir.debootstrap.log"
  # A private mount namespace: /proc for apt and dpkg disappears with it.
  # shellcheck disable=SC2016  # expanded by the inner shell, from its arguments
  unshare --mount --fork bash -euo pipefail -c '
    dir=$1 suite=$2 mirror=$3
    mount -t proc proc "$dir/proc"
    cat >"$dir/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    rm -f "$dir/etc/apt/sources.list"
    chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
      LC_ALL=C.UTF-8 bash -euo pipefail -c "
        apt-get update -qq
        apt-get -y -qq upgrade >/dev/null
        cd /tmp
        apt-get download -qq libpython3.11-dev
        # Headers and the link-time libpython3.11.so only: the package itself would pull libc6-dev
        # and zlib1g-dev into the final images, which the official image does not have.
        dpkg-deb --fsys-tarfile libpython3.11-dev_*.deb \
          | tar -x -C / ./usr/include ./usr/lib/x86_64-linux-gnu/libpython3.11.so
        rm -f libpython3.11-dev_*.deb
        python3 -m venv /usr/local
        rm -f /usr/local/bin/activate* /usr/local/bin/Activate.ps1
        apt-get clean
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /tmp/*
      "
    umount "$dir/proc"
  ' _ "$dir" "$DEBIAN_SUITE" "$DEBIAN_MIRROR"
  # The build host's resolver configuration must not ship in the image; buildah mounts its own.
  : >"$dir/etc/resolv.conf"
  rm -f "$dir/etc/hostname"
}

base_key() {
  { echo "suite=$DEBIAN_SUITE mirror=$DEBIAN_MIRROR image=$BASE_IMAGE"; declare -f base_rootfs base_commit; } | key_of
}

base_commit() { # base_commit TAR KEY: import the root file system tar as BASE_IMAGE
  local tar=$1 key=$2 ctr
  ctr=$(bh from --pull=never scratch)
  bh add --quiet "$ctr" "$tar" / >/dev/null
  bh config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --env PYTHON_VERSION=3.11.2 --cmd python3 \
    --label "org.opencontainers.image.description=deeprec-serving stand-in for $BASE_IMAGE: debootstrap $DEBIAN_SUITE with Debian's python3" \
    "$ctr"
  bh commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  bh tag "$BASE_IMAGE" "localhost/deeprec-inputs/base:$key"
}

build_base() { # sets BASE_KEY
  local key tar t=$SECONDS
  key=$(base_key)
  BASE_KEY=$key
  if image_exists "localhost/deeprec-inputs/base:$key"; then
    bh tag "localhost/deeprec-inputs/base:$key" "$BASE_IMAGE"
    log "base $BASE_IMAGE: up to date (key $key)"
    return
  fi
  tar=$IMG_CACHE/base/rootfs-$key.tar
  if [[ ! -f $tar ]]; then
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
    local work=$IMG_CACHE/base/work-$key
    rm -rf "$work" "$work.debootstrap.log" "$work.log"
    mkdir -p "$IMG_CACHE/base"
    log "base: debootstrap $DEBIAN_SUITE + python3 into $work"
    # Not `base_rootfs ... || die`: bash ignores set -e inside a function called that way.
    local rc
    set +e
    (set -e; base_rootfs "$work") >"$work.log" 2>&1
    rc=$?
    set -e
    ((rc == 0)) || die "building the base root file system failed; last lines of $work.log:
$(tail -n 30 "$work.log")"
    tar --numeric-owner -C "$work" -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf "$work" "$work.debootstrap.log" "$work.log"
    # Older keys' tars are of no further use.
    find "$IMG_CACHE/base" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$key.tar" -delete
    log "base: root file system cached as $tar ($(du -h "$tar" | cut -f1), $((SECONDS - t))s)"
  else
    log "base: root file system from the cache ($tar)"
  fi
  base_commit "$tar" "$key" >&2
  drop_other_keys base "$key"
  log "base $BASE_IMAGE built in $((SECONDS - t))s"
}

# --- pause image ---------------------------------------------------------------------------------
# What the kubelet runs as each pod's sandbox; built from the Kubernetes source's pause.c, which
# the control-plane build already downloaded.
pause_source() {
  local src=${DEEPREC_K8S_CACHE:-$HOME/.cache/deeprec-serving/k8s-$K8S_VERSION}/src/kubernetes/build/pause/linux/pause.c
  [[ -f $src ]] || die "$src not found: run 'scripts/k8s-plane.sh build' first"
  echo "$src"
}

build_pause() {
  local src key t=$SECONDS
  src=$(pause_source)
  key=$({ cat "$src"; echo "$PAUSE_IMAGE"; declare -f build_pause; } | key_of)
  if image_exists "localhost/deeprec-inputs/pause:$key"; then
    bh tag "localhost/deeprec-inputs/pause:$key" "$PAUSE_IMAGE"
    log "pause $PAUSE_IMAGE: up to date (key $key)"; return
  fi
  command -v gcc >/dev/null || die "gcc not found (apt-get install gcc libc6-dev)"
  local work ctr
  work=$(mktemp -d)
  gcc -Os -static -DVERSION="v$PAUSE_VERSION-deeprec" -o "$work/pause" "$src" || { rm -rf "$work"; die "compiling pause.c failed"; }
  strip "$work/pause"
  ctr=$(bh from --pull=never scratch)
  bh copy --quiet "$ctr" "$work/pause" /pause >/dev/null
  bh config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  bh commit --quiet --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
  bh tag "$PAUSE_IMAGE" "localhost/deeprec-inputs/pause:$key"
  rm -rf "$work"
  drop_other_keys pause "$key"
  log "pause $PAUSE_IMAGE built in $((SECONDS - t))s"
}

# --- the project's images -------------------------------------------------------------------------
# Every file the Dockerfile's COPY lines (those without --from) bring in, minus what
# .dockerignore leaves out of the context: exactly what the build reads from the tree.
context_hash() { # context_hash DOCKERFILE
  python3 - "$REPO" "$1" <<'PY'
import fnmatch, hashlib, os, shlex, sys
repo, dockerfile = sys.argv[1], sys.argv[2]
ignore = []
if os.path.exists(os.path.join(repo, ".dockerignore")):
    ignore = [l.strip().rstrip("/") for l in open(os.path.join(repo, ".dockerignore"))
              if l.strip() and not l.startswith("#")]
def ignored(rel):
    parts = rel.split("/")
    for pat in ignore:
        pat = pat.removeprefix("**/")
        if any(fnmatch.fnmatch("/".join(parts[:i + 1]), pat) or fnmatch.fnmatch(parts[i], pat)
               for i in range(len(parts))):
            return True
    return False
sources = []
for line in open(os.path.join(repo, dockerfile)):
    words = shlex.split(line.split("#", 1)[0]) if line.strip() else []
    if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
        sources += [w for w in words[1:-1] if not w.startswith("--")]
h = hashlib.sha256(open(os.path.join(repo, dockerfile), "rb").read())
files = []
for src in sources:
    top = os.path.join(repo, src.rstrip("/"))
    if os.path.isfile(top):
        files.append(os.path.relpath(top, repo))
    for root, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not ignored(os.path.relpath(os.path.join(root, d), repo)))
        files += [os.path.relpath(os.path.join(root, n), repo) for n in names]
for rel in sorted(set(f for f in files if not ignored(f))):
    path = os.path.join(repo, rel)
    h.update(f"{rel}\0{os.stat(path).st_mode & 0o777:o}\0".encode())
    h.update(open(path, "rb").read())
    h.update(b"\0")
print(h.hexdigest())
PY
}

# Build-time access to the package registries as the host has it: the host network, its pip
# configuration and CA bundle (read-only, only while RUN steps run; nothing of it is committed).
registry_mounts() {
  local f
  for f in /etc/pip.conf /etc/ssl/certs/ca-certificates.crt; do
    [[ -f $f ]] && printf -- '-v\n%s:%s:ro\n' "$f" "$f"
  done
  return 0
}

build_app() { # build_app NAME DOCKERFILE IMAGE BASE_KEY
  local name=$1 dockerfile=$2 image=$3 base_key=$4 key t=$SECONDS
  key=$({ context_hash "$dockerfile"; echo "base=$base_key image=$image"; declare -f build_app registry_mounts; } | key_of)
  if image_exists "localhost/deeprec-inputs/$name:$key"; then
    bh tag "localhost/deeprec-inputs/$name:$key" "$image"
    log "$name $image: up to date (key $key, $(image_size "$image"))"; return
  fi
  local mounts=()
  mapfile -t mounts < <(registry_mounts)
  log "$name: buildah bud -f $dockerfile (key $key)"
  # runc and cgroupfs: crun refuses this machine kind's hybrid cgroup layout and there is no
  # systemd. --pull=never: the base exists only here.
  (cd "$REPO" && bh bud --quiet --pull=never --network host --runtime /usr/sbin/runc \
      --layers=false "${mounts[@]}" \
      -f "$dockerfile" -t "$image" -t "localhost/deeprec-inputs/$name:$key" .) \
    >"$IMG_CACHE/$name.build.log" 2>&1 \
    || die "building $name failed; last lines of $IMG_CACHE/$name.build.log:
$(tail -n 40 "$IMG_CACHE/$name.build.log")"
  drop_other_keys "$name" "$key"
  log "$name $image built in $((SECONDS - t))s ($(image_size "$image"))"
}

# Untag NAME's other keys (older builds) and let buildah delete what no tag holds any more.
drop_other_keys() { # drop_other_keys NAME KEY
  local ref
  while read -r ref; do
    # The filter lists every name of a matching image, the chart's tag included: only ours go.
    [[ $ref == "localhost/deeprec-inputs/$1:"* && $ref != "localhost/deeprec-inputs/$1:$2" ]] || continue
    bh rmi "$ref" >/dev/null 2>&1 || log "could not remove $ref"
  done < <(bh images --noheading --format '{{.Name}}:{{.Tag}}' \
             --filter "reference=localhost/deeprec-inputs/$1" 2>/dev/null || true)
  bh rmi --prune >/dev/null 2>&1 || true
}

# After a build: the key each image is tagged with now is the one to keep.
prune_stale() {
  local name img id ref
  for name in base pause operator runtime; do
    case $name in
      base) img=$BASE_IMAGE ;; pause) img=$PAUSE_IMAGE ;;
      operator) img=$OPERATOR_IMAGE ;; runtime) img=$RUNTIME_IMAGE ;;
    esac
    id=$(image_id "$img")
    ref=$(bh images --noheading --format '{{.ID}} {{.Name}}:{{.Tag}}' \
            --filter "reference=localhost/deeprec-inputs/$name" 2>/dev/null \
          | awk -v id="$id" -v p="localhost/deeprec-inputs/$name:" 'index(id, $1) == 1 && index($2, p) == 1 {print $2; exit}')
    [[ -n $ref ]] && drop_other_keys "$name" "${ref##*:}"
  done
  return 0
}

cmd_build() {
  [[ $(id -u) == 0 ]] || die "needs root (buildah with kernel overlay storage, debootstrap)"
  command -v buildah >/dev/null || die "buildah not found (apt-get install buildah runc)"
  [[ -x /usr/sbin/runc ]] || die "/usr/sbin/runc not found (apt-get install runc)"
  mkdir -p "$IMG_CACHE" "$RUN_ROOT"
  local t0=$SECONDS
  build_base
  build_pause
  build_app operator Dockerfile.operator "$OPERATOR_IMAGE" "$BASE_KEY"
  build_app runtime Dockerfile.runtime "$RUNTIME_IMAGE" "$BASE_KEY"
  prune_stale
  log "images ready in $((SECONDS - t0))s"
  cmd_list
}

cmd_list() {
  local img
  for img in "$BASE_IMAGE" "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"; do
    if image_exists "$img"; then
      printf '%-55s %s %s\n' "$img" "$(image_id "$img" | cut -c1-12)" "$(image_size "$img")"
    else
      printf '%-55s (not built)\n' "$img"
    fi
  done
}

cmd_names() {
  printf 'base=%s\npause=%s\noperator=%s\nruntime=%s\n' "$BASE_IMAGE" "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"
}

cmd_load() { # cmd_load SOCKET
  local sock=${1:-} img t ctr_bin
  [[ -S $sock ]] || die "usage: images.sh load SOCKET (no containerd socket at '${sock}')"
  ctr_bin=$(command -v ctr) || die "ctr not found (apt-get install containerd)"
  for img in "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"; do
    image_exists "$img" || die "$img is not built: run 'scripts/images.sh build' first"
  done
  for img in "$PAUSE_IMAGE" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"; do
    t=$SECONDS
    # Streamed: no archive on disk. The archive names the image, so containerd stores it under
    # the very name pods ask for, and unpacks it for the CRI's snapshotter.
    bh push --quiet "$img" "docker-archive:/dev/stdout:$img" \
      | "$ctr_bin" --address "$sock" -n k8s.io images import --snapshotter overlayfs - >/dev/null \
      || die "loading $img into containerd at $sock failed"
    log "loaded $img into containerd in $((SECONDS - t))s"
  done
}

cmd_files() { # cmd_files IMAGE
  local img=${1:-} ctr mnt
  [[ -n $img ]] || die "usage: images.sh files IMAGE"
  image_exists "$img" || die "$img is not built"
  ctr=$(bh from --pull=never "$img")
  mnt=$(bh mount "$ctr")
  (cd "$mnt" && find . -xdev -printf '%y %m %p\n') | sed 's# \./# /#; s# \.$# /#' || true
  bh umount "$ctr" >/dev/null
  bh rm "$ctr" >/dev/null
}

cmd_config() { # cmd_config IMAGE
  local img=${1:-}
  [[ -n $img ]] || die "usage: images.sh config IMAGE"
  image_exists "$img" || die "$img is not built"
  bh inspect --type image "$img" | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["OCIv1"]["config"]))'
}

usage() { sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

case ${1:-} in
  build) cmd_build ;;
  load) shift; cmd_load "$@" ;;
  files) shift; cmd_files "$@" ;;
  config) shift; cmd_config "$@" ;;
  list) cmd_list ;;
  names) cmd_names ;;
  -h|--help|help|"") usage ;;
  *) usage; exit 2 ;;
esac
