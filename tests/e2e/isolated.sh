#!/bin/bash
# Runs a command (the e2e pytest run) in its own network and mount namespaces, so that what real nodes put on
# the machine exists only there and vanishes with the run: node /32 addresses on lo, CNI bridges and pod network
# namespaces, the kubelet's and kube-proxy's iptables rules, net.ipv4.ip_forward and bridge-nf-call-iptables (per
# network namespace), routes, bind mounts, and the fixed paths /var/lib/kubelet, /run/netns, /run/containerd
# (each a tmpfs here) and the node paths /usr/local/vgpu and /run/hami (tmpfs here; each real node binds its own
# directories over them and over /var/lib/kubelet in a mount namespace of its own: e2e_harness/real_node.py
# NODE_PATHS). Nothing routes off the machine from inside (the new
# namespace has only lo), so no test can reach a network or a DNS resolver.
#
# The kubelet also changes three machine-wide sysctls (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops:
# protectKernelDefaults=false); they are recorded here before the run and restored after it, whatever its end.
#
#   tests/e2e/isolated.sh CMD [ARGS...]      exit status = CMD's
# Needs root (unshare --net/--mount). HAMI_E2E_ISOLATED=1 is set inside, so tests can tell where they run.
set -euo pipefail

if [[ "${HAMI_E2E_ISOLATED:-}" == 1 ]]; then
  exec "$@"  # already inside (a nested make target)
fi

# One isolated run at a time per machine: the sysctls below are machine-wide, so a second run started during a
# first would record the first one's kubelet values as "before" and put them back at its end (seen when two
# engineers ran e2e files side by side: the machine was left with overcommit_memory=1 and panic_on_oops=1).
exec 9>/run/hami-e2e-isolated.lock
if ! flock -n 9; then
  echo "isolated.sh: another e2e run holds this machine's real-node lock; waiting for it to end" >&2
  flock 9
fi

GLOBAL_SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
declare -A saved=()
for key in "${GLOBAL_SYSCTLS[@]}"; do
  saved[$key]=$(sysctl -n "$key")
done
# Mount points must exist on the host for a mount inside the namespace; only what is created here is removed.
# containerd puts containers' cgroups under <controller>/k8s.io (cgroups are not namespaced here): runc removes
# each container's, the empty parents made during the run are removed after it.
cgroup_parents=()
for controller in /sys/fs/cgroup/*/; do
  [[ -d ${controller}k8s.io ]] || cgroup_parents+=("${controller}k8s.io")
done
created=()
FIXED_DIRS=(/var/lib/kubelet /run/netns /run/containerd /usr/local/vgpu /run/hami)
for dir in "${FIXED_DIRS[@]}"; do
  if [[ ! -d $dir ]]; then
    mkdir -p "$dir"
    created+=("$dir")
  fi
done

restore() {
  for key in "${GLOBAL_SYSCTLS[@]}"; do
    if [[ "$(sysctl -n "$key")" != "${saved[$key]}" ]]; then
      sysctl -q -w "$key=${saved[$key]}" || echo "isolated.sh: could not restore $key=${saved[$key]}" >&2
    fi
  done
  for dir in "${created[@]}" "${cgroup_parents[@]}"; do
    rmdir "$dir" 2>/dev/null || true
  done
}
trap restore EXIT

rc=0
HAMI_E2E_ISOLATED=1 FIXED_COUNT=${#FIXED_DIRS[@]} unshare --net --mount --propagation private -- /bin/bash -c '
  set -e
  ip link set lo up
  # Fixed paths real nodes write to: the kubelet creates /var/lib/kubelet/device-plugins (hard-coded), containerd
  # pins pod network namespaces in /run/netns and puts its shim sockets under /run/containerd.
  # The node paths (real_node.NODE_PATHS) are mount points each node binds its own directory over.
  for dir in "${@:1:$FIXED_COUNT}"; do
    mount -t tmpfs -o mode=0755 hami-e2e "$dir"
  done
  shift "$FIXED_COUNT"
  exec "$@"' isolated.sh "${FIXED_DIRS[@]}" "$@" 9>&- || rc=$?  # the lock stays with this shell, not with daemons of the run
exit "$rc"
