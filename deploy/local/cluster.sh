#!/usr/bin/env bash
# A 6-node Redis Cluster (3 masters, 3 replicas) on 127.0.0.1:7000-7005, from redis-server.
#
#   deploy/local/cluster.sh [start]   start, create the cluster, print its redis-cluster:// URL
#   deploy/local/cluster.sh url       print the URL
#   deploy/local/cluster.sh status    list the running PIDs
#   deploy/local/cluster.sh stop      kill the PIDs recorded at start, remove the state
#
# Environment: TESSERA_CLUSTER_PORT (first port, default 7000; the bus uses port + 10000),
# TESSERA_STATE_DIR (default ${TMPDIR:-/tmp}/tessera-local-$UID; this script uses cluster/).
set -Eeuo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

BASE_PORT=${TESSERA_CLUSTER_PORT:-7000}
STATE=$STATE_ROOT/cluster
PORTS=()
for i in 0 1 2 3 4 5; do PORTS+=($((BASE_PORT + i))); done

url() {
  local extra="" port
  for port in "${PORTS[@]:1}"; do extra="$extra${extra:+&}node=$LOOPBACK:$port"; done
  echo "redis-cluster://$LOOPBACK:${PORTS[0]}?$extra"
}

cluster_ok() {
  local port
  for port in "${PORTS[@]}"; do
    redis-cli -h "$LOOPBACK" -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

pong() { [ "$(redis-cli -h "$LOOPBACK" -p "$1" ping 2>/dev/null)" = PONG ]; }

start() {
  need redis-server redis-cli
  prepare_state "$STATE"
  local bus=() port
  for port in "${PORTS[@]}"; do bus+=($((port + 10000))); done
  require_free_ports "${PORTS[@]}" "${bus[@]}"
  mkdir -p "$STATE"
  trap 'echo "start failed; stopping what was started" >&2; stop_state "$STATE" >&2' ERR
  for port in "${PORTS[@]}"; do
    mkdir -p "$STATE/$port"
    spawn "$STATE" redis-server "$STATE/$port/redis.log" \
      redis-server --port "$port" --bind "$LOOPBACK" --dir "$STATE/$port" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --save "" --appendonly no --daemonize no
  done
  for port in "${PORTS[@]}"; do wait_until 10 "redis-server on port $port" pong "$port"; done
  local addrs=()
  for port in "${PORTS[@]}"; do addrs+=("$LOOPBACK:$port"); done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$STATE/create.log" 2>&1 ||
    { cat "$STATE/create.log" >&2; false; }
  wait_until 30 "cluster_state:ok on every node" cluster_ok
  trap - ERR
  url >"$STATE/url"
  echo "Redis Cluster on $LOOPBACK:${PORTS[0]}-${PORTS[5]} (state: $STATE)"
  echo "demo: cargo run --release -p tessera-demo -- --redis '$(url)'"
  url
}

case "${1:-start}" in
  start) start ;;
  stop) stop_state "$STATE" ;;
  url) url ;;
  status) live_pids "$STATE" ;;
  *) die "usage: $0 [start|stop|status|url]" ;;
esac
