#!/usr/bin/env bash
# A real node for `k8s-plane.sh up DIR --real-node`: containerd + runc + a CNI bridge, the kubelet
# and kube-proxy, with the whole control plane, inside a network namespace made for the plane.
# Sourced by scripts/k8s-plane.sh after scripts/k8s/plane.sh (PLANE_DIR, K8S_BIN, log, die,
# wait_for, is_ours, stop_pid, ...); not run directly.
#
# Why a network namespace: pods need routable addresses, a Service VIP needs kube-proxy's
# iptables rules, and the kubelet refuses a loopback node IP. Inside the namespace all of that is
# private to the plane: the host's interfaces, routes and iptables are never touched, and with no
# default route nothing a pod sends can leave the machine. The processes share the host's mount
# and PID namespaces (nsenter --net only), so the kubelet's volume mounts are visible to runc and
# every daemon is stopped by its pid.
#
# Layout added to DIR:
#   node/             kubelet, kube-proxy, containerd and CNI configuration; saved sysctls
#   containerd/       containerd's root (images, snapshots), state and socket
#   kubelet/          the kubelet's root directory (pods, volumes, cpu_manager_state)
#   bin/              kubectl, helm and ctr wrappers that enter the namespace (the env file's PATH)
#
# Addresses (inside the namespace only): node 10.201.0.1 (API server :6443, kubelet :10250) on an
# empty bridge, pods 10.202.0.0/24 on the CNI bridge cni0, Services 10.96.0.0/16.

NODE_NAME=deeprec-node
NODE_IP=10.201.0.1
NODE_POD_CIDR=10.202.0.0/24
NODE_API_PORT=6443
NODE_BRIDGE=drnode0
# What the kubelet writes under /proc/sys at start-up (setupKernelTunables); saved by `up` and
# put back by `down`, so the host keeps its own values once the node is gone.
NODE_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
              kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

node_netns_name() { # a name derived from the plane folder: a rerun in DIR finds its own
  printf 'deeprec-%s' "$(printf '%s' "$PLANE_DIR" | sha256sum | cut -c1-10)"
}

# in_netns CMD...: run CMD inside the plane's network namespace (empty PLANE_NETNS: directly).
in_netns() {
  if [[ -n ${PLANE_NETNS:-} ]]; then nsenter --net="/run/netns/$PLANE_NETNS" "$@"; else "$@"; fi
}

node_check_tools() {
  local t missing=()
  for t in containerd containerd-shim-runc-v2 ctr runc nsenter ip iptables findmnt; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || missing+=(/usr/lib/cni/bridge)
  ((${#missing[@]} == 0)) || die "a real node needs: ${missing[*]} (apt-get install containerd runc containernetworking-plugins iptables iproute2 util-linux)"
  [[ $(id -u) == 0 ]] || die "a real node needs root (network namespace, containerd, kubelet)"
  local b
  for b in kubelet kube-proxy; do [[ -x $K8S_BIN/$b ]] || die "$K8S_BIN/$b missing: run 'scripts/k8s-plane.sh build'"; done
}

node_netns_up() {
  PLANE_NETNS=$(node_netns_name)
  if [[ -e /run/netns/$PLANE_NETNS ]]; then
    log "removing the stale network namespace $PLANE_NETNS of an earlier run in $PLANE_DIR"
    ip netns delete "$PLANE_NETNS"
  fi
  ip netns add "$PLANE_NETNS" || die "ip netns add $PLANE_NETNS failed"
  echo "$PLANE_NETNS" >"$PLANE_DIR/node/netns"
  in_netns ip link set lo up
  # The kubelet wants a non-loopback node IP and this kernel has no dummy device: an empty bridge.
  in_netns ip link add "$NODE_BRIDGE" type bridge
  in_netns ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  in_netns ip link set "$NODE_BRIDGE" up
  # Forwarding between pods and towards Service backends; bridged replies through iptables so
  # that a Service's DNAT is undone for pods on the same bridge. Both are per namespace.
  in_netns sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
    || die "setting forwarding sysctls in $PLANE_NETNS failed"
}

make_node_pki() { # client and serving certificates for the node's components, from the plane's CA
  local pki=$PLANE_DIR/pki
  (
    cd "$pki"
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
    # The Node authorizer admits a kubelet by this exact name and group.
    cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
    cert kubelet-serving "/CN=$NODE_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
    # Bound to system:node-proxier by the default RBAC policy.
    cert kube-proxy "/CN=system:kube-proxy" "$client"
    # The API server's identity towards kubelets (logs, exec); the kubelet asks the API server
    # (webhook authorization) whether it may.
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  ) || die "creating node certificates with openssl failed"
}

node_cgroup_root() { echo "/$PLANE_NETNS"; }

# The kubelet's pods live under a cgroup of the plane's own (cgroupRoot), so that `down` removes
# exactly what this node created. It must exist in every hierarchy before the kubelet starts.
node_cgroups_up() {
  local root mnt
  root=$(node_cgroup_root)
  while read -r mnt; do
    mkdir -p "$mnt$root"
    if [[ -f $mnt/cpuset.cpus ]]; then  # cgroup v1 cpuset: empty until given cpus and mems
      cat "$mnt/cpuset.cpus" >"$mnt$root/cpuset.cpus"
      cat "$mnt/cpuset.mems" >"$mnt$root/cpuset.mems"
    fi
  done < <(findmnt -rn -t cgroup,cgroup2 -o TARGET)
}

node_cgroups_down() {
  local root mnt
  [[ -n ${PLANE_NETNS:-} ]] || return 0
  root=$(node_cgroup_root)
  while read -r mnt; do
    [[ -d $mnt$root ]] || continue
    # Deepest first; a cgroup still holding a task stays (and is reported).
    find "$mnt$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ ! -d $mnt$root ]] || log "cgroup $mnt$root could not be removed (a process is still in it)"
  done < <(findmnt -rn -t cgroup,cgroup2 -o TARGET)
}

write_node_config() {
  local node=$PLANE_DIR/node pki=$PLANE_DIR/pki kc=$PLANE_DIR/kubeconfigs
  local server=https://$NODE_IP:$NODE_API_PORT pause
  pause=$(bash "$SCRIPT_DIR/images.sh" names | sed -n 's/^pause=//p')
  [[ -n $pause ]] || die "scripts/images.sh names printed no pause image"
  write_kubeconfig "$kc/kubelet.kubeconfig" "$server" "$pki" kubelet
  write_kubeconfig "$kc/kube-proxy.kubeconfig" "$server" "$pki" kube-proxy
  mkdir -p "$node/cni/net.d" "$node/cni/ipam" "$PLANE_DIR/containerd" "$PLANE_DIR/kubelet/pod-logs"

  cat >"$node/containerd.toml" <<TOML
version = 2
root = "$PLANE_DIR/containerd/root"
state = "$PLANE_DIR/containerd/state"
[grpc]
  address = "$PLANE_DIR/containerd/containerd.sock"
[ttrpc]
  address = "$PLANE_DIR/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$PLANE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Built by scripts/images.sh: nothing can be pulled.
  sandbox_image = "$pause"
  # root here lacks CAP_SYS_RESOURCE and cannot lower an OOM score: without this every sandbox
  # fails in runc ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  # Pod network namespaces under the state folder, not /run/netns: down finds them all.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni/net.d"
TOML

  cat >"$node/cni/net.d/10-deeprec.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "deeprec-node",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$node/cni/ipam",
               "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON

  # No cluster DNS runs here: pods get a resolver file without servers, so a Service name fails
  # at once instead of waiting on a server that cannot answer; clients use Service ClusterIPs.
  printf '# deeprec-serving real node: no cluster DNS\noptions timeout:1 attempts:1\n' >"$node/resolv.conf"

  cat >"$node/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$PLANE_DIR/containerd/containerd.sock
# No systemd here (cgroupfs), and this machine kind mounts cgroup v1.
cgroupDriver: cgroupfs
cgroupRoot: $(node_cgroup_root)
failCgroupV1: false
failSwapOn: false
# Exclusive cores for Guaranteed pods with whole CPUs. The static policy needs some CPU reserved;
# 500m keeps CPU 0 for shared use (the operator, system pods) and leaves 1.5 CPUs allocatable
# on two cores, where reservedSystemCPUs "0" would leave only 1.
cpuManagerPolicy: static
kubeReserved: {cpu: 500m}
# The disk and memory are shared with other work: evict only when truly short.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
clusterDomain: cluster.local
resolvConf: $node/resolv.conf
podLogsDir: $PLANE_DIR/kubelet/pod-logs
maxPods: 40
serializeImagePulls: false
YAML

  cat >"$node/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $kc/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $NODE_POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# conntrack limits are machine-wide settings of the host: leave them as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {minSyncPeriod: 0s, syncPeriod: 30s}
YAML
}

node_save_sysctls() {
  local f=$PLANE_DIR/node/sysctls.saved s
  [[ -f $f ]] && return 0  # a restart keeps the values from before the first start
  for s in "${NODE_SYSCTLS[@]}"; do printf '%s=%s\n' "$s" "$(sysctl -n "$s")"; done >"$f.tmp"
  mv "$f.tmp" "$f"
}

node_restore_sysctls() {
  local f=$PLANE_DIR/node/sysctls.saved line
  [[ -f $f ]] || return 0
  while read -r line; do sysctl -qw "$line" || log "could not restore $line"; done <"$f"
  rm -f "$f"
}

start_daemon() { # start_daemon NAME BINARY ARGS...: like start_component, any binary, in the namespace
  local name=$1 bin=$2; shift 2
  setsid nsenter --net="/run/netns/$PLANE_NETNS" "$bin" "$@" >"$PLANE_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$PLANE_DIR/pids/$name.pid"
  echo "$name" >>"$PLANE_DIR/components"
}

write_node_wrappers() {
  mkdir -p "$PLANE_DIR/bin"
  local b
  for b in kubectl helm; do
    printf '#!/bin/sh\n# %s inside the plane'"'"'s network namespace, where the API server listens.\nexec nsenter --net=/run/netns/%s %s "$@"\n' \
      "$b" "$PLANE_NETNS" "$K8S_BIN/$b" >"$PLANE_DIR/bin/$b"
  done
  printf '#!/bin/sh\n# ctr against the node'"'"'s containerd.\nexec %s --address %s "$@"\n' \
    "$(command -v ctr)" "$PLANE_DIR/containerd/containerd.sock" >"$PLANE_DIR/bin/ctr"
  chmod +x "$PLANE_DIR/bin/"*
}

# Started before the control plane: containerd, and the project's images streamed into it
# (about a minute) while etcd and the API server come up.
node_up_runtime() {
  node_check_tools
  mkdir -p "$PLANE_DIR/node"
  node_netns_up
  node_save_sysctls
  make_node_pki
  write_node_config
  write_node_wrappers
  node_cgroups_up
  start_daemon containerd "$(command -v containerd)" --config "$PLANE_DIR/node/containerd.toml"
  wait_for 30 "containerd's socket" containerd \
    ctr --address "$PLANE_DIR/containerd/containerd.sock" version
  log "containerd ready in $PLANE_NETNS"
  # Its own session, so that a failed `up` can stop it by pid like the daemons.
  setsid bash "$SCRIPT_DIR/images.sh" load "$PLANE_DIR/containerd/containerd.sock" \
    >"$PLANE_DIR/logs/images-load.log" 2>&1 </dev/null &
  echo $! >"$PLANE_DIR/pids/images-load.pid"
}

images_loaded() { # the load has ended; its exit status decides
  local pid
  pid=$(cat "$PLANE_DIR/pids/images-load.pid")
  ! kill -0 "$pid" 2>/dev/null
}

# After the control plane: the kubelet and kube-proxy, once the images are in.
node_up_kubelet() {
  local t=$SECONDS pid rc=0
  wait_for 600 "the images to load into containerd (logs/images-load.log)" "" images_loaded
  pid=$(cat "$PLANE_DIR/pids/images-load.pid")
  wait "$pid" || rc=$?
  rm -f "$PLANE_DIR/pids/images-load.pid"
  ((rc == 0)) || die "loading the images into containerd failed:
$(tail -n 20 "$PLANE_DIR/logs/images-load.log")"
  log "images in containerd ($(grep -c 'loaded ' "$PLANE_DIR/logs/images-load.log") images, waited $((SECONDS - t))s)"
  t=$SECONDS
  start_daemon kubelet "$K8S_BIN/kubelet" --config "$PLANE_DIR/node/kubelet.yaml" \
    --kubeconfig "$PLANE_DIR/kubeconfigs/kubelet.kubeconfig" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --root-dir "$PLANE_DIR/kubelet" --cert-dir "$PLANE_DIR/kubelet/pki" --v=2
  start_daemon kube-proxy "$K8S_BIN/kube-proxy" --config "$PLANE_DIR/node/kube-proxy.yaml" --v=1
  wait_for 120 "node $NODE_NAME Ready" kubelet plane_kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  wait_for 60 "kube-proxy's first sync" kube-proxy in_netns curl -sf --max-time 2 http://127.0.0.1:10256/healthz
  log "node $NODE_NAME Ready, kube-proxy synced ($((SECONDS - t))s after the kubelet started)"
}

# Stops every container of the node (through containerd: the kubelet is already stopped), the
# shims that outlive containerd by design, and unmounts what the kubelet and containerd mounted.
node_down_containers() {
  local sock=$PLANE_DIR/containerd/containerd.sock id
  if [[ -S $sock ]] && component_alive containerd; then
    local c="ctr --address $sock -n k8s.io"
    for id in $($c tasks ls -q 2>/dev/null); do $c tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $($c tasks ls -q 2>/dev/null); do $c tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $($c containers ls -q 2>/dev/null); do $c containers delete "$id" >/dev/null 2>&1 || true; done
  fi
}

node_down_shims() { # shims of this node's containerd, found by the address they were given
  local p
  for p in /proc/[0-9]*; do
    [[ $(cat "$p/comm" 2>/dev/null) == containerd-shim* ]] || continue
    is_ours "${p#/proc/}" && stop_pid containerd-shim "${p#/proc/}"
  done
}

node_down_mounts() {
  local m
  # Deepest first: volumes inside pod folders inside the kubelet's own bind mount.
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done < <(findmnt -rn -o TARGET | awk -v d="$PLANE_DIR/" 'index($0, d) == 1' | sort -r)
}

node_down() { # after the daemons are stopped
  [[ -f $PLANE_DIR/node/netns ]] || return 0
  PLANE_NETNS=$(cat "$PLANE_DIR/node/netns")
  node_down_shims
  node_down_mounts
  node_cgroups_down
  if [[ -e /run/netns/$PLANE_NETNS ]]; then ip netns delete "$PLANE_NETNS" || log "ip netns delete $PLANE_NETNS failed"; fi
  node_restore_sysctls
  # Images and snapshots are gigabytes; the images stay in scripts/images.sh's store.
  rm -rf "$PLANE_DIR/containerd" "$PLANE_DIR/kubelet" "$PLANE_DIR/node/netns"
}
