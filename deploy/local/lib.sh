# shellcheck shell=bash disable=SC2034
# Shared helpers for the local topology scripts (sourced, not run). Every process a script starts
# is recorded in its state directory's `pids` file; `stop` signals only those PIDs, and only while
# they still run the program that was started.

LOOPBACK=127.0.0.1
STATE_ROOT=${TESSERA_STATE_DIR:-${TMPDIR:-/tmp}/tessera-local-$(id -u)}
DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (Debian/Ubuntu: apt-get install redis-server redis-tools prometheus)"
  done
}

# port_open PORT: something accepts connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/$LOOPBACK/$1") 2>/dev/null
}

require_free_ports() {
  local port
  for port in "$@"; do
    if port_open "$port"; then
      die "port $LOOPBACK:$port is already in use; stop whatever listens there first"
    fi
  done
}

# pid_runs PID NAME: PID is alive and its command line mentions NAME.
pid_runs() {
  local pid=$1 name=$2
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name"
}

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$(echo "${stat##*) }" | cut -d' ' -f1)" != Z ]
}

# spawn STATE NAME LOG CMD...: starts CMD in the background, immune to hangups, and records its PID.
spawn() {
  local state=$1 name=$2 log=$3
  shift 3
  nohup "$@" >"$log" 2>&1 </dev/null &
  echo "$! $name $log" >>"$state/pids"
}

# live_pids STATE: the recorded PIDs that still run what was started.
live_pids() {
  local state=$1 pid name
  [ -f "$state/pids" ] || return 0
  while read -r pid name _; do
    if pid_runs "$pid" "$name"; then echo "$pid"; fi
  done <"$state/pids"
}

# stop_state STATE: TERM the recorded PIDs, KILL what is left after 5 s, remove STATE.
stop_state() {
  local state=$1 pids pid
  if [ ! -d "$state" ]; then
    echo "nothing to stop ($state does not exist)"
    return 0
  fi
  pids=$(live_pids "$state")
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    pids=$(live_pids "$state")
    [ -z "$pids" ] && break
    sleep 0.1
  done
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$state"
  echo "stopped; removed $state"
}

# all_alive STATE: every recorded process still runs; otherwise names the one that exited and
# shows the end of its log (LOG is the third field of the pids file).
all_alive() {
  local state=$1 pid name log
  [ -f "$state/pids" ] || return 0
  while read -r pid name log; do
    # Not pid_runs: right after the fork the command line is still this script's.
    if ! pid_alive "$pid"; then
      echo "$name (pid $pid) exited during start-up; last lines of $log:" >&2
      tail -n 10 "$log" >&2 || true
      return 1
    fi
  done <"$state/pids"
}

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 0.2 s; gives up early when a process
# this script started (in $STATE) has exited.
wait_until() {
  local timeout=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    if [ -n "${STATE:-}" ] && ! all_alive "$STATE"; then
      echo "gave up waiting for $what" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out after ${timeout}s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

# Refuses to start twice; removes a stale state directory whose processes are all gone. The
# caller creates the directory once its ports are known to be free.
prepare_state() {
  local state=$1
  if [ -d "$state" ]; then
    if [ -n "$(live_pids "$state")" ]; then
      die "already running (state in $state); '$(basename "$0") stop' first"
    fi
    rm -rf "$state"
  fi
}
