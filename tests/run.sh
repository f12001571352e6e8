#!/usr/bin/env bash
# The project's test command: installs the servers the integration suites start (redis-server,
# redis-cli, prometheus) when they are missing and it can, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The koa-session-redis3 interop suites run the real seed (tests/koa-app) under Node.
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# The device page's test drives a real headless Chromium over WebDriver.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them, e.g. 'sudo apt-get install ${need[*]}')" >&2
    command -v redis-server >/dev/null 2>&1 || exit 1
  fi
fi
# Servers that a package install may have started are not ours; the tests start their own on
# free loopback ports and never touch them.

# The Koa app's dependencies, exactly as its lockfile pins them (koa 1.7.1, koa-session-redis3
# 1.3.4, cookies 0.8.0, keygrip 1.1.0).
if command -v npm >/dev/null 2>&1 && [ ! -d tests/koa-app/node_modules/koa-session-redis3 ]; then
  (cd tests/koa-app && npm ci --no-audit --no-fund)
fi

exec cargo test --workspace --locked "$@"
