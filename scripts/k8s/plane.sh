#!/usr/bin/env bash
# Starts and stops a control plane from the cache's binaries.
# Sourced by scripts/k8s-plane.sh (which sets K8S_BIN, K8S_CACHE, log, die); not run directly.
#
# Layout of a plane folder DIR after `up DIR`:
#   kubeconfig        admin credentials (O=system:masters), certificates embedded
#   env               export lines: KUBECONFIG, PATH, K8S_PLANE_DIR, K8S_PLANE_POD_CIDRS, ...
#                     (KUBECACHEDIR too: kubectl's discovery cache is keyed by host:port, and
#                     ports are reused by later planes)
#   pki/              CA, serving and client certificates, service-account key pair
#   kubeconfigs/      one kubeconfig per component
#   logs/NAME.log     each component's output
#   pids/NAME.pid     each component's process id (used by `down`)
#   etcd/             etcd data (no fsync)
#   components        the components started, in start order (used by `down`)
# With --real-node, also node/, containerd/, kubelet/ and bin/ (scripts/k8s/node.sh).

K8S_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
K8S_NODES=(kwok-node-1 kwok-node-2)

free_ports() { # free_ports N: N distinct free TCP ports on 127.0.0.1, one a line
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}

b64() { base64 -w0 <"$1"; }

make_pki() { # make_pki PKI_DIR [EXTRA_SANS]: EXTRA_SANS e.g. "IP:10.201.0.1"
  local pki=$1 extra_san=${2:-}
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -keyout ca.key -out ca.crt -subj "/CN=deeprec-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    # Service-account token signing pair.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
    cert() { # cert NAME SUBJECT EXTENSIONS
      printf '%s\n' "$3" >"$1.ext"
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local${extra_san:+,$extra_san}"
    cert admin "/O=system:masters/CN=deeprec-e2e-admin" "$client"
    cert controller-manager "/CN=system:kube-controller-manager" "$client"
    cert scheduler "/CN=system:kube-scheduler" "$client"
    # kwok plays the kubelet of every fake node; it updates any node's and pod's status.
    cert kwok "/O=system:masters/CN=kwok" "$client"
  ) || die "creating certificates with openssl failed"
}

write_kubeconfig() { # write_kubeconfig FILE SERVER PKI_DIR CERT_NAME
  local file=$1 server=$2 pki=$3 name=$4
  umask 077
  cat >"$file" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: deeprec-e2e
  cluster:
    server: $server
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(b64 "$pki/$name.crt")
    client-key-data: $(b64 "$pki/$name.key")
contexts:
- name: deeprec-e2e
  context:
    cluster: deeprec-e2e
    user: $name
    namespace: default
current-context: deeprec-e2e
YAML
  umask 022
}

start_component() { # start_component NAME ARGS...; records DIR/pids/NAME.pid
  local name=$1; shift
  local netns=()
  # A real node's plane lives in its network namespace; nsenter execs, so the pid stays.
  [[ -n ${PLANE_NETNS:-} ]] && netns=(nsenter --net="/run/netns/$PLANE_NETNS")
  # A session of its own: a Ctrl-C aimed at the caller's terminal does not reach the plane;
  # `down` (or the owner watch) stops it.
  setsid "${netns[@]}" "$K8S_BIN/$name" "$@" >"$PLANE_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$PLANE_DIR/pids/$name.pid"
  grep -qx "$name" "$PLANE_DIR/components" 2>/dev/null || echo "$name" >>"$PLANE_DIR/components"
}

# is_ours PID: the process is alive and was started for this plane folder (one of its arguments
# is the folder or a path inside it), which guards against a recycled pid.
is_ours() {
  local pid=$1 arg argv=()
  [[ -r /proc/$pid/cmdline ]] || return 1
  mapfile -d '' argv <"/proc/$pid/cmdline" 2>/dev/null || return 1
  for arg in "${argv[@]}"; do
    [[ $arg == "$PLANE_DIR" || $arg == "$PLANE_DIR"/* ]] && return 0
  done
  return 1
}

# in_exec PID: the process is alive (not a zombie) but its command line reads empty, which is
# what /proc shows while it is inside execve(); right after start_component that is our own
# component on its way to exec, not a dead one.
in_exec() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z && -z "$(tr -d '\0' <"/proc/$1/cmdline" 2>/dev/null)" ]]
}

# our_child PID: the process is alive (not a zombie) and a child of this shell. Right after
# start_component, before the forked shell has exec'd, its command line is this script's own,
# which may name the plane folder differently (relative, trailing slash): still our component.
our_child() {
  local status ppid state
  status=$(cat "/proc/$1/status" 2>/dev/null) || return 1
  ppid=$(awk '/^PPid:/ {print $2}' <<<"$status")
  state=$(awk '/^State:/ {print $2}' <<<"$status")
  [[ $ppid == "$$" && $state != Z ]]
}

component_alive() {
  local f=$PLANE_DIR/pids/$1.pid pid
  [[ -f $f ]] || return 1
  pid=$(cat "$f")
  is_ours "$pid" || in_exec "$pid" || our_child "$pid"
}

exit_status() { # exit_status NAME: how a component started by this shell ended, in words
  local pid rc=0
  pid=$(cat "$PLANE_DIR/pids/$1.pid" 2>/dev/null) || { echo "no pid file"; return; }
  if kill -0 "$pid" 2>/dev/null; then echo "pid $pid still exists but is not ours"; return; fi
  wait "$pid" 2>/dev/null || rc=$?
  if ((rc > 128)); then echo "killed by signal $((rc - 128))"; else echo "exit status $rc"; fi
}

wait_for() { # wait_for SECONDS DESCRIPTION COMPONENT COMMAND...
  local limit=$1 what=$2 comp=$3; shift 3
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [[ -n $comp ]] && ! component_alive "$comp"; then
      die "$comp exited ($(exit_status "$comp")) while waiting for $what; last lines of $PLANE_DIR/logs/$comp.log:
$(tail -n 25 "$PLANE_DIR/logs/$comp.log" 2>/dev/null || echo "(the log file is gone)")"
    fi
    if ((SECONDS >= deadline)); then
      die "timed out after ${limit}s waiting for $what${comp:+; last lines of $PLANE_DIR/logs/$comp.log:
$(tail -n 25 "$PLANE_DIR/logs/$comp.log" 2>/dev/null)}"
    fi
    sleep 0.2
  done
}

plane_kubectl() { in_netns "$K8S_BIN/kubectl" --kubeconfig "$PLANE_DIR/kubeconfig" "$@"; }

healthz() { # healthz URL: an HTTPS health endpoint answers "ok"
  [[ "$(in_netns curl -sk --max-time 2 "$1")" == ok ]]
}

node_manifest() { # node_manifest NAME POD_CIDR
  cat <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $1
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: $1
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/agent: ""
spec:
  podCIDR: $2
  podCIDRs: [$2]
status:
  capacity: {cpu: "8", memory: 32Gi, pods: "110", nvidia.com/gpu: "2"}
  allocatable: {cpu: "8", memory: 32Gi, pods: "110", nvidia.com/gpu: "2"}
YAML
}

plane_up() { # plane_up DIR [--owner-pid PID] [--real-node]
  local dir=${1:-}
  [[ -n $dir ]] || die "usage: k8s-plane.sh up DIR [--owner-pid PID] [--real-node]"
  shift
  local owner="" real=0
  while (($#)); do
    case $1 in
      --owner-pid) owner=${2:?--owner-pid needs a pid}; shift 2 ;;
      --real-node) real=1; shift ;;
      *) die "unknown option for up: $1" ;;
    esac
  done
  k8s_cache_complete || die "the binary cache at $K8S_CACHE is missing or incomplete: run 'scripts/k8s-plane.sh build' first (about 10 minutes cold)"
  command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
  command -v curl >/dev/null || die "curl not found (apt-get install curl)"
  command -v python3 >/dev/null || die "python3 not found"
  mkdir -p "$dir"
  PLANE_DIR=$(cd "$dir" && pwd)
  local c comps=("${K8S_COMPONENTS[@]}")
  [[ -f $PLANE_DIR/components ]] && mapfile -t comps <"$PLANE_DIR/components"
  for c in "${comps[@]}"; do
    component_alive "$c" && die "a plane is already running in $PLANE_DIR ($c is alive); run down first"
  done
  # What a killed real node left behind (mounts, its network namespace, cgroups).
  node_down
  rm -rf "$PLANE_DIR/etcd" "$PLANE_DIR/pids" "$PLANE_DIR/logs" "$PLANE_DIR/pki" "$PLANE_DIR/kubeconfigs" \
    "$PLANE_DIR/components" "$PLANE_DIR/node" "${PLANE_DIR:?}/bin"
  mkdir -p "$PLANE_DIR/pids" "$PLANE_DIR/logs" "$PLANE_DIR/kubeconfigs"
  # If anything below fails, stop what was started.
  trap 'rc=$?; if ((rc != 0)); then log "up failed; stopping what was started"; plane_down "$PLANE_DIR" || true; fi' EXIT

  local t0=$SECONDS
  local ports etcd_client etcd_peer api_port kcm_port sched_port server
  if ((real)); then
    # Its own network namespace: fixed ports, and an API server on the node's address, which
    # the `kubernetes` Service (pods' in-cluster configuration) then points at.
    etcd_client=2379 etcd_peer=2380 api_port=$NODE_API_PORT kcm_port=10257 sched_port=10259
    server=https://$NODE_IP:$api_port
  else
    mapfile -t ports < <(free_ports 5)
    etcd_client=${ports[0]} etcd_peer=${ports[1]} api_port=${ports[2]} kcm_port=${ports[3]} sched_port=${ports[4]}
    server=https://127.0.0.1:$api_port
  fi
  # Pod IPs come from loopback /24s (all of 127.0.0.0/8 reaches this machine), so a local process
  # bound to a pod's IP can stand in for that pod. A random second octet keeps planes that run at
  # the same time apart; K8S_PLANE_POD_NET pins it.
  local net=${K8S_PLANE_POD_NET:-$((100 + RANDOM % 100))}
  local cidr1=127.$net.1.0/24 cidr2=127.$net.2.0/24 cidr_default=127.$net.250.0/24

  if ((real)); then make_pki "$PLANE_DIR/pki" "IP:$NODE_IP"; else make_pki "$PLANE_DIR/pki"; fi
  local pki=$PLANE_DIR/pki kc=$PLANE_DIR/kubeconfigs
  write_kubeconfig "$PLANE_DIR/kubeconfig" "$server" "$pki" admin
  write_kubeconfig "$kc/controller-manager.kubeconfig" "$server" "$pki" controller-manager
  write_kubeconfig "$kc/scheduler.kubeconfig" "$server" "$pki" scheduler
  write_kubeconfig "$kc/kwok.kubeconfig" "$server" "$pki" kwok
  # A real node: its namespace, containerd and the image load first (the load overlaps etcd and
  # the API server's start).
  ((real)) && node_up_runtime

  start_component etcd --name deeprec-e2e --data-dir "$PLANE_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "deeprec-e2e=http://127.0.0.1:$etcd_peer" --initial-cluster-state new \
    --unsafe-no-fsync --log-level warn
  wait_for 30 "etcd health" etcd in_netns bash -c "curl -s --max-time 2 http://127.0.0.1:$etcd_client/health | grep -q '\"health\":\"true\"'"
  log "etcd ready on 127.0.0.1:$etcd_client ($((SECONDS - t0))s)"

  local api_net=()
  if ((real)); then
    # The node's address: pods reach it through the `kubernetes` Service; kubelets are
    # reached (logs, exec) with a client certificate and their serving certificate is checked.
    api_net=(--bind-address 0.0.0.0 --advertise-address "$NODE_IP"
             --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt"
             --kubelet-client-key "$pki/apiserver-kubelet-client.key"
             --kubelet-certificate-authority "$pki/ca.crt"
             --kubelet-preferred-address-types InternalIP)
  else
    # --endpoint-reconciler-type none: the API refuses 127.0.0.1 as an endpoint address, so the
    # `kubernetes` Service's endpoints could never be written (nothing here runs in-cluster).
    api_net=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none)
  fi
  start_component kube-apiserver \
    --etcd-servers "http://127.0.0.1:$etcd_client" \
    "${api_net[@]}" --secure-port "$api_port" \
    --cert-dir "$PLANE_DIR/pki/apiserver-generated" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=true --profiling=false --v=1
  wait_for 90 "kube-apiserver /readyz" kube-apiserver \
    in_netns curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz"
  log "kube-apiserver ready at $server ($((SECONDS - t0))s)"

  start_component kube-controller-manager \
    --kubeconfig "$kc/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$kc/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$kc/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$PLANE_DIR/pki/kcm-generated" \
    --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --controllers '*' --leader-elect=false --cluster-name deeprec-e2e --profiling=false --v=1
  start_component kube-scheduler \
    --kubeconfig "$kc/scheduler.kubeconfig" \
    --authentication-kubeconfig "$kc/scheduler.kubeconfig" \
    --authorization-kubeconfig "$kc/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --cert-dir "$PLANE_DIR/pki/scheduler-generated" \
    --leader-elect=false --profiling=false --v=1
  if ((real)); then
    wait_for 60 "kube-controller-manager /healthz" kube-controller-manager healthz "https://127.0.0.1:$kcm_port/healthz"
    wait_for 60 "kube-scheduler /healthz" kube-scheduler healthz "https://127.0.0.1:$sched_port/healthz"
    node_up_kubelet
  else
    start_component kwok \
      --kubeconfig "$kc/kwok.kubeconfig" --config "$K8S_CACHE/kwok-stages.yaml" \
      --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
      --node-lease-duration-seconds 40 --node-ip 127.0.0.1 --cidr "$cidr_default"

    # Nodes: created by us (a kubelet registers itself; kwok does not), made Ready by kwok.
    local n i=0 cidrs=("$cidr1" "$cidr2")
    for n in "${K8S_NODES[@]}"; do
      node_manifest "$n" "${cidrs[i]}" | plane_kubectl apply -f - >/dev/null || die "creating node $n failed"
      i=$((i + 1))
    done
    wait_for 60 "kube-controller-manager /healthz" kube-controller-manager healthz "https://127.0.0.1:$kcm_port/healthz"
    wait_for 60 "kube-scheduler /healthz" kube-scheduler healthz "https://127.0.0.1:$sched_port/healthz"
    wait_for 60 "kwok nodes Ready" kwok plane_kubectl wait --for=condition=Ready node "${K8S_NODES[@]}" --timeout=2s
  fi
  # Pods are refused until the namespace's default ServiceAccount exists (made by the controller
  # manager), so wait for it to keep the first test deterministic.
  wait_for 60 "the default ServiceAccount" kube-controller-manager plane_kubectl -n default get serviceaccount default
  mapfile -t comps <"$PLANE_DIR/components"
  for c in "${comps[@]}"; do component_alive "$c" || die "$c exited during start-up (see $PLANE_DIR/logs/$c.log)"; done

  if ((real)); then
    # bin/ holds kubectl and helm wrappers that enter the namespace: callers use them as usual.
    cat >"$PLANE_DIR/env" <<ENV
export KUBECONFIG=$PLANE_DIR/kubeconfig
export PATH=$PLANE_DIR/bin:$K8S_BIN:\$PATH
export K8S_PLANE_DIR=$PLANE_DIR
export K8S_PLANE_BIN=$PLANE_DIR/bin
export K8S_PLANE_SERVER=$server
export K8S_PLANE_POD_CIDRS=$NODE_POD_CIDR
export K8S_PLANE_NODES=$NODE_NAME
export K8S_PLANE_NETNS=$PLANE_NETNS
export K8S_PLANE_NODE_IP=$NODE_IP
export K8S_PLANE_KUBELET_DIR=$PLANE_DIR/kubelet
export KUBECACHEDIR=$PLANE_DIR/kube-cache
ENV
  else
    cat >"$PLANE_DIR/env" <<ENV
export KUBECONFIG=$PLANE_DIR/kubeconfig
export PATH=$K8S_BIN:\$PATH
export K8S_PLANE_DIR=$PLANE_DIR
export K8S_PLANE_BIN=$K8S_BIN
export K8S_PLANE_SERVER=$server
export K8S_PLANE_POD_CIDRS=$cidr1,$cidr2
export K8S_PLANE_NODES=$(IFS=,; echo "${K8S_NODES[*]}")
export KUBECACHEDIR=$PLANE_DIR/kube-cache
ENV
  fi
  if [[ -n $owner ]]; then
    # Stops the plane if its owner dies without calling down (a killed test run).
    setsid "$SCRIPT_DIR/k8s-plane.sh" _watch "$PLANE_DIR" "$owner" >"$PLANE_DIR/logs/watch.log" 2>&1 </dev/null &
    echo $! >"$PLANE_DIR/pids/watch.pid"
  fi
  trap - EXIT
  log "plane up in $((SECONDS - t0))s: KUBECONFIG=$PLANE_DIR/kubeconfig (source $PLANE_DIR/env)"
}

stop_pid() { # stop_pid NAME PID
  local name=$1 pid=$2 i
  is_ours "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    is_ours "$pid" || return 0
    sleep 0.1
  done
  log "$name (pid $pid) did not stop in 10s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

plane_down() { # plane_down DIR
  local dir=${1:-}
  [[ -n $dir ]] || die "usage: k8s-plane.sh down DIR"
  [[ -d $dir ]] || { log "no plane folder $dir; nothing to stop"; return 0; }
  PLANE_DIR=$(cd "$dir" && pwd)
  local c f idx comps=("${K8S_COMPONENTS[@]}")
  [[ -f $PLANE_DIR/components ]] && mapfile -t comps <"$PLANE_DIR/components"
  if [[ -f $PLANE_DIR/node/netns ]]; then
    # A real node: no new containers (kubelet, and an image load still running) and no more
    # rule syncs, then every container, while containerd still runs.
    f=$PLANE_DIR/pids/images-load.pid
    if [[ -f $f ]]; then
      if is_ours "$(cat "$f")"; then kill -TERM -- "-$(cat "$f")" 2>/dev/null || true; fi
      rm -f "$f"
    fi
    for c in kubelet kube-proxy; do
      f=$PLANE_DIR/pids/$c.pid
      [[ -f $f ]] && stop_pid "$c" "$(cat "$f")"
      rm -f "$f"
    done
    node_down_containers
  fi
  # Reverse start order: kwok (or containerd) first, etcd last.
  for ((idx = ${#comps[@]} - 1; idx >= 0; idx--)); do
    c=${comps[idx]}
    f=$PLANE_DIR/pids/$c.pid
    [[ -f $f ]] || continue
    stop_pid "$c" "$(cat "$f")"
    rm -f "$f"
  done
  node_down
  f=$PLANE_DIR/pids/watch.pid
  if [[ -f $f ]]; then
    # When the watch itself runs down, it is our parent: leave it to exit on its own.
    [[ "$(cat "$f")" == "$PPID" ]] || stop_pid watch "$(cat "$f")"
    rm -f "$f"
  fi
  log "plane in $PLANE_DIR stopped"
}

plane_watch() { # plane_watch DIR OWNER_PID: runs down once OWNER_PID is gone
  local dir=$1 owner=$2
  while kill -0 "$owner" 2>/dev/null; do sleep 2; done
  log "owner $owner is gone; stopping the plane in $dir"
  "$SCRIPT_DIR/k8s-plane.sh" down "$dir"
}

plane_restart_apiserver() { # plane_restart_apiserver DIR [--down-seconds N] [--kill]
  # Stops kube-apiserver and starts it again with the very same arguments (read back from the
  # running process), as a control-plane upgrade (SIGTERM; it stops listening at once but may
  # take 10 s to exit) or a crash (--kill: SIGKILL) would; clients see their watches cut and
  # connections refused while it is down. The old log moves to NAME.log.1.
  local dir=${1:-}
  [[ -n $dir && -d $dir ]] || die "usage: k8s-plane.sh restart-apiserver DIR [--down-seconds N] [--kill]"
  shift
  local down=0 kill=0
  while (($#)); do
    case $1 in
      --down-seconds) down=${2:?--down-seconds needs a number}; shift 2 ;;
      --kill) kill=1; shift ;;
      *) die "unknown option for restart-apiserver: $1" ;;
    esac
  done
  PLANE_DIR=$(cd "$dir" && pwd)
  [[ -f $PLANE_DIR/node/netns ]] && PLANE_NETNS=$(cat "$PLANE_DIR/node/netns")
  local f=$PLANE_DIR/pids/kube-apiserver.pid pid argv=()
  [[ -f $f ]] && is_ours "$(cat "$f")" || die "no kube-apiserver of this plane is running in $PLANE_DIR"
  pid=$(cat "$f")
  mapfile -d '' argv <"/proc/$pid/cmdline" || die "cannot read the arguments of kube-apiserver (pid $pid)"
  local t0=$SECONDS
  if ((kill)); then
    kill -KILL "$pid" 2>/dev/null || true
    while is_ours "$pid"; do sleep 0.1; done
  else
    stop_pid kube-apiserver "$pid"
  fi
  sleep "$down"
  mv -f "$PLANE_DIR/logs/kube-apiserver.log" "$PLANE_DIR/logs/kube-apiserver.log.1"
  start_component kube-apiserver "${argv[@]:1}"
  local server pki=$PLANE_DIR/pki
  server=$(sed -n 's/^export K8S_PLANE_SERVER=//p' "$PLANE_DIR/env")
  wait_for 90 "kube-apiserver /readyz" kube-apiserver \
    in_netns curl -sf --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz"
  log "kube-apiserver restarted at $server ($((SECONDS - t0))s, ${down}s down)"
}
