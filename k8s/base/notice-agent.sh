#!/bin/sh
# notice-agent.sh ARGS...: runs `ganray agent --address GCS ARGS...` for the Ray node of this VM.
#
# Where GCS and its token come from: the files the Ray pod on this VM leaves in the Ray temp dir the two
# pods share (the host folder /var/lib/ganray/ray, at /tmp/ray in both; docs/cluster.md):
#   ray_current_cluster  the GCS address of the Ray cluster that owns the VM, written by `ray start`
#   session_latest       Ray's session folder; its sockets/raylet* tell one raylet from the next
#   ganray_auth_token    that cluster's own Ray token, written (0400) by the Ray pod's init container
# Never from a process's command line: any process on the VM can name itself raylet. A file is used only
# when it is a plain file (no link) that this agent's user (the Ray user, uid 1000) owns and nobody else can
# write, in a folder nobody else can write; the address only when it is exactly HOST:PORT.
#
# The agent follows the VM: when its Ray pod goes (the init container of the next one removes the address
# first) or Ray restarts, the agent is stopped and started again for the next node, without exiting. An
# agent that fails takes this script down with its status. NOTICE_AGENT_RAY_TMP: the Ray temp dir (tests).
set -u
ray_tmp=${NOTICE_AGENT_RAY_TMP:-/tmp/ray}
wait_s=${NOTICE_AGENT_WAIT_S:-5}
me=$(id -u)
said=""
agent=""
watcher=""

say() { printf 'notice-agent: %s\n' "$*"; }

shown() {  # a value as it may be logged: quoted, one line, at most 80 characters
  printf "'%s'" "$(printf '%s' "$1" | tr -c 'A-Za-z0-9.:_/-' '?' | cut -c1-80)"
}

refuse() {  # says why the node's files cannot be used, once per distinct reason
  [ "$1" = "$said" ] && return 1
  said=$1
  say "refusing $1; waiting for the Ray pod to write it again"
  return 1
}

private() {  # private PATH TYPE: owned by this user or root, not a link, writable by nobody else
  if [ -L "$1" ]; then refuse "$1: a link"; return 1; fi
  [ -e "$1" ] || return 1
  owner=$(stat -c %u "$1") && mode=$(stat -c %A "$1") || return 1
  case "$owner" in "$me" | 0) ;; *) refuse "$1: owned by uid $owner"; return 1 ;; esac
  case "$mode" in "$2"????-??-?) ;; *) refuse "$1: mode $mode, others can write it"; return 1 ;; esac
}

host_port() {  # whether $1 is exactly HOST:PORT (a DNS name, an IPv4 or a [IPv6] address; 1 to 5 digits)
  case "$1" in
    \[*\]:*)
      host=${1%]:*}
      case "${host#\[}" in "" | *[!0-9A-Fa-f:.]*) return 1 ;; esac ;;
    *)
      case "$1" in "" | *[!A-Za-z0-9.:-]* | [.:-]* | *:*:*) return 1 ;; esac
      [ "${1##*:}" != "$1" ] || return 1 ;;
  esac
  port=${1##*:}
  case "$port" in "" | *[!0-9]* | ??????*) return 1 ;; esac
}

read_address() {  # sets address to this VM's Ray node's GCS; fails while there is none to trust
  private "$ray_tmp" d || return 1
  private "$ray_tmp/ray_current_cluster" - || return 1
  address=$(cat "$ray_tmp/ray_current_cluster") || return 1
  if ! host_port "$address"; then
    refuse "$ray_tmp/ray_current_cluster: $(shown "$address"), not HOST:PORT"
    return 1
  fi
  private "$ray_tmp/ganray_auth_token" - || return 1
  case $(stat -c %A "$ray_tmp/ganray_auth_token") in
    -???------) ;;
    *) refuse "$ray_tmp/ganray_auth_token: others can read it"; return 1 ;;
  esac
  [ -d "$ray_tmp/session_latest/sockets" ]
}

session() {  # what tells this Ray node from the next: its address, its session folder, its raylet sockets
  printf '%s|%s|%s' "$(cat "$ray_tmp/ray_current_cluster" 2>/dev/null)" "$(readlink "$ray_tmp/session_latest")" \
    "$(ls -i "$ray_tmp/session_latest/sockets" 2>/dev/null | grep raylet | tr '\n' ' ')"
}

watch() {  # stops the agent when this VM's Ray node is no longer the one it was started for
  while [ "$(session)" = "$1" ]; do sleep "$wait_s"; done
  kill "$2" 2>/dev/null
}

stop() {
  [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent"
  exit 143
}
trap stop TERM INT

unset RAY_AUTH_TOKEN
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$ray_tmp/ganray_auth_token"
while :; do
  # The same address twice, a poll apart: `ray start` writes the file in place.
  until read_address && first=$address && sleep "$wait_s" && read_address && [ "$address" = "$first" ]; do
    sleep "$wait_s"
  done
  now=$(session)
  said=""
  say "Ray cluster at $(shown "$address") (from $ray_tmp/ray_current_cluster)"
  ganray agent --address "$address" "$@" &
  agent=$!
  watch "$now" "$agent" &
  watcher=$!
  wait "$agent"
  status=$?
  kill "$watcher" 2>/dev/null
  agent=""
  watcher=""
  if [ "$(session)" != "$now" ]; then
    say "the Ray node of this VM changed; the agent stopped and waits for the next one"
    continue
  fi
  say "the agent exited with status $status"
  exit "$status"
done
