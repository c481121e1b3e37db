#!/usr/bin/env bash
# node/stop.sh RUN [DIR]: stop the node that node-up.sh started (RUN is its /run/cubbyhole/<id>):
# the kubelet and scheduler, every container process (all of the node's cgroup), the runc
# shims, containerd; then unmount what they mounted under RUN and DIR, remove the node's
# cgroups and bridge. Safe to run twice, and when DIR is already gone.
set -uo pipefail
RUN="${1:?usage: stop.sh RUN [DIR]}"
DIR="${2:-}"
[[ -s "$RUN/node.env" ]] || exit 0
source "$RUN/node.env"

stop() { # name
  local f="$RUN/$1.pid" pid
  [[ -s "$f" ]] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}
[[ "${BASHPID}" == "$(cat "$RUN/watchdog.pid" 2>/dev/null)" ]] || stop watchdog
stop kubelet
stop scheduler

# Every container process lives in the node's cgroup tree; the shims name the socket.
for _ in $(seq 1 50); do
  pids="$(cat /sys/fs/cgroup/pids"$NODE_CGROUP_ROOT"/cgroup.procs $(find /sys/fs/cgroup/pids"$NODE_CGROUP_ROOT" -mindepth 1 -name cgroup.procs 2>/dev/null) 2>/dev/null | sort -u)"
  shims="$(grep -l -a -- "${CONTAINERD_SOCK%.sock}[.]sock" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true)"
  [[ -z "$pids$shims" ]] && break
  kill -KILL $pids $shims 2>/dev/null
  sleep 0.1
done
stop containerd

# Mounts: container rootfs and netns under RUN, pod volumes (Secrets, tokens) under DIR.
for _ in 1 2 3; do
  awk '{print $2}' /proc/mounts | grep -E "^($RUN${DIR:+|$DIR})/" | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
done
for h in /sys/fs/cgroup/*/; do
  [[ -d "$h${NODE_CGROUP_ROOT#/}" ]] || continue
  find "$h${NODE_CGROUP_ROOT#/}" -depth -type d -exec rmdir {} \; 2>/dev/null
done
ip link del "$NODE_BRIDGE" 2>/dev/null
rm -rf "$RUN"
echo "node/stop.sh: node $NODE_NAME stopped"
