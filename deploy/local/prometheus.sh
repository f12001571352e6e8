#!/usr/bin/env bash
# Prometheus with deploy/prometheus/prometheus.yml (and its alerts.yml) on 127.0.0.1:9091, with
# its own data directory. It scrapes the targets in deploy/prometheus/targets/ (the demo on
# 127.0.0.1:3000, as `cargo run --release -p tessera-demo` serves it).
#
#   deploy/local/prometheus.sh [start]   start and wait until ready
#   deploy/local/prometheus.sh status    list the running PID
#   deploy/local/prometheus.sh stop      kill the PID recorded at start, remove the state
#
# Environment: PROMETHEUS (binary, default /usr/bin/prometheus), TESSERA_PROMETHEUS_PORT (9091),
# TESSERA_STATE_DIR (default ${TMPDIR:-/tmp}/tessera-local-$UID; this script uses prometheus/).
set -Eeuo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

PROMETHEUS=${PROMETHEUS:-/usr/bin/prometheus}
PORT=${TESSERA_PROMETHEUS_PORT:-9091}
CONFIG=$DEPLOY_DIR/prometheus/prometheus.yml
STATE=$STATE_ROOT/prometheus

ready() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null "http://$LOOPBACK:$PORT/-/ready" 2>/dev/null
  else
    port_open "$PORT"
  fi
}

start() {
  [ -x "$PROMETHEUS" ] || die "$PROMETHEUS not found (Debian/Ubuntu: apt-get install prometheus)"
  prepare_state "$STATE"
  require_free_ports "$PORT"
  mkdir -p "$STATE"
  trap 'echo "start failed; stopping what was started" >&2; stop_state "$STATE" >&2' ERR
  spawn "$STATE" prometheus "$STATE/prometheus.log" \
    "$PROMETHEUS" --config.file="$CONFIG" --storage.tsdb.path="$STATE/data" \
    --web.listen-address="$LOOPBACK:$PORT" --web.enable-lifecycle
  wait_until 30 "Prometheus on port $PORT" ready
  trap - ERR
  echo "Prometheus on http://$LOOPBACK:$PORT (config: $CONFIG, state: $STATE)"
  echo "targets: $DEPLOY_DIR/prometheus/targets/*.yml; alerts: http://$LOOPBACK:$PORT/alerts"
}

case "${1:-start}" in
  start) start ;;
  stop) stop_state "$STATE" ;;
  status) live_pids "$STATE" ;;
  *) die "usage: $0 [start|stop|status]" ;;
esac
