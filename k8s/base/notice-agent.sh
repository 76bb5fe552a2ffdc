#!/bin/sh
# notice-agent.sh ARGS...: runs `ganray agent --address GCS ARGS...` for the Ray node of this VM.
# With hostPID the raylet of this VM's Ray pod is visible (one per VM); its --gcs-address names the
# Ray cluster that owns the VM, whichever it is (the RayCluster, a RayJob's or a RayService's).
# `ganray agent` then finds the node as a driver on the VM would (local_node_id: the raylet process
# and its sockets under the shared /tmp/ray). When that raylet exits, the agent is stopped and the
# kubelet starts this script again for the next Ray pod. NOTICE_AGENT_PROC: the proc root (tests).
set -u
proc=${NOTICE_AGENT_PROC:-/proc}
wait_s=${NOTICE_AGENT_WAIT_S:-5}

find_raylet() {  # prints "PID GCS_ADDRESS" of this host's raylet; fails when there is none
  for f in "$proc"/[0-9]*/cmdline; do
    args=$(tr '\0' ' ' < "$f" 2>/dev/null) || continue
    case "${args%% *}" in */raylet) ;; *) continue ;; esac
    case "$args" in *--gcs-address=*) ;; *) continue ;; esac
    gcs=${args#*--gcs-address=}
    pid=${f%/cmdline}
    echo "${pid##*/} ${gcs%% *}"
    return 0
  done
  return 1
}

until found=$(find_raylet); do sleep "$wait_s"; done
pid=${found% *}
gcs=${found#* }
echo "notice-agent: raylet $pid, Ray cluster at $gcs"
ganray agent --address "$gcs" "$@" &
agent=$!
(
  while [ -d "$proc/$pid" ]; do sleep "$wait_s"; done
  echo "notice-agent: raylet $pid is gone; stopping the agent"
  kill "$agent" 2>/dev/null
) &
watcher=$!
wait "$agent"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
