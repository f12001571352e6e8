#!/usr/bin/env bash
# A Sentinel set on 127.0.0.1: master 6380, replica 6381, sentinels 26380-26382 monitoring it as
# `mymaster` (quorum 2).
#
#   deploy/local/sentinel.sh [start]   start, wait for replication and sentinel discovery, print
#                                      the redis-sentinel:// URL
#   deploy/local/sentinel.sh url       print the URL
#   deploy/local/sentinel.sh status    list the running PIDs
#   deploy/local/sentinel.sh stop      kill the PIDs recorded at start, remove the state
#
# Environment: TESSERA_SENTINEL_MASTER_PORT (6380), TESSERA_SENTINEL_REPLICA_PORT (6381),
# TESSERA_SENTINEL_PORT (first sentinel, 26380), TESSERA_STATE_DIR (default
# ${TMPDIR:-/tmp}/tessera-local-$UID; this script uses sentinel/).
set -Eeuo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

MASTER_PORT=${TESSERA_SENTINEL_MASTER_PORT:-6380}
REPLICA_PORT=${TESSERA_SENTINEL_REPLICA_PORT:-6381}
FIRST_SENTINEL=${TESSERA_SENTINEL_PORT:-26380}
SENTINELS=("$FIRST_SENTINEL" $((FIRST_SENTINEL + 1)) $((FIRST_SENTINEL + 2)))
SERVICE=mymaster
STATE=$STATE_ROOT/sentinel

url() {
  echo "redis-sentinel://$LOOPBACK:${SENTINELS[0]}?node=$LOOPBACK:${SENTINELS[1]}&node=$LOOPBACK:${SENTINELS[2]}&sentinelServiceName=$SERVICE"
}

pong() { [ "$(redis-cli -h "$LOOPBACK" -p "$1" ping 2>/dev/null)" = PONG ]; }

info_field() { # PORT SECTION FIELD
  redis-cli -h "$LOOPBACK" -p "$1" info "$2" 2>/dev/null | tr -d '\r' | sed -n "s/^$3://p"
}

replication_up() {
  [ "$(info_field "$MASTER_PORT" replication connected_slaves)" = 1 ] &&
    [ "$(info_field "$REPLICA_PORT" replication master_link_status)" = up ]
}

# Every sentinel sees the master as healthy, its replica and the two other sentinels.
sentinels_converged() {
  local port reply
  for port in "${SENTINELS[@]}"; do
    reply=$(redis-cli -h "$LOOPBACK" -p "$port" sentinel master "$SERVICE" 2>/dev/null | tr -d '\r' | paste -sd' ' -) || return 1
    case " $reply " in *" flags master "*) ;; *) return 1 ;; esac
    case " $reply " in *" num-slaves 1 "*) ;; *) return 1 ;; esac
    case " $reply " in *" num-other-sentinels 2 "*) ;; *) return 1 ;; esac
  done
}

data_node() { # PORT [MASTER_PORT]
  local port=$1 dir=$STATE/$1
  mkdir -p "$dir"
  # Roles live in a config file: sentinel rewrites it (CONFIG REWRITE) after a failover.
  if [ $# -gt 1 ]; then echo "replicaof $LOOPBACK $2" >"$dir/redis.conf"; else echo "# role managed by sentinel" >"$dir/redis.conf"; fi
  spawn "$STATE" redis-server "$dir/redis.log" \
    redis-server "$dir/redis.conf" --port "$port" --bind "$LOOPBACK" --dir "$dir" \
    --save "" --appendonly no --daemonize no
}

sentinel_node() { # PORT
  local port=$1 dir=$STATE/$1
  mkdir -p "$dir"
  cat >"$dir/sentinel.conf" <<CONF
port $port
bind $LOOPBACK
daemonize no
dir "$dir"
sentinel monitor $SERVICE $LOOPBACK $MASTER_PORT 2
sentinel down-after-milliseconds $SERVICE 5000
sentinel failover-timeout $SERVICE 10000
sentinel parallel-syncs $SERVICE 1
CONF
  spawn "$STATE" redis-server "$dir/sentinel.log" redis-server "$dir/sentinel.conf" --sentinel
}

start() {
  need redis-server redis-cli
  prepare_state "$STATE"
  require_free_ports "$MASTER_PORT" "$REPLICA_PORT" "${SENTINELS[@]}"
  mkdir -p "$STATE"
  trap 'echo "start failed; stopping what was started" >&2; stop_state "$STATE" >&2' ERR
  data_node "$MASTER_PORT"
  wait_until 10 "master on port $MASTER_PORT" pong "$MASTER_PORT"
  data_node "$REPLICA_PORT" "$MASTER_PORT"
  wait_until 10 "replica on port $REPLICA_PORT" pong "$REPLICA_PORT"
  # Sentinels learn replicas from the master's INFO; start them once the replica is attached.
  wait_until 30 "replication $MASTER_PORT -> $REPLICA_PORT" replication_up
  local port
  for port in "${SENTINELS[@]}"; do sentinel_node "$port"; done
  for port in "${SENTINELS[@]}"; do wait_until 10 "sentinel on port $port" pong "$port"; done
  wait_until 30 "sentinels to discover the replica and each other" sentinels_converged
  trap - ERR
  url >"$STATE/url"
  echo "Sentinel set: master $LOOPBACK:$MASTER_PORT, replica $LOOPBACK:$REPLICA_PORT, sentinels ${SENTINELS[*]} (state: $STATE)"
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
