#!/usr/bin/env bash
# The main job on this machine: starts PostgreSQL and NATS when they are not running,
# migrates, provisions the streams and runs the demo pipeline with synthetic traffic.
# Without bot tokens it feeds synthetic activity; with TTFD__DISCORD__TOKEN (and
# TTFD__DISCORD__GUILD_ID) or TTFD__TELEGRAM__TOKEN set, it also runs those bots and
# feeds nothing synthetic. Extra arguments go to `ttfd demo` (see `ttfd demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export TTFD__DATABASE__URL="${TTFD__DATABASE__URL:-postgres://postgres@127.0.0.1:5432/ttfd}"
db="${TTFD__DATABASE__URL##*/}"; db="${db%%\?*}"
if ! psql "${TTFD__DATABASE__URL%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  psql "${TTFD__DATABASE__URL%/*}/postgres" -qc "CREATE DATABASE \"$db\""
fi
cargo build --release --quiet
./target/release/ttfd migrate
./target/release/ttfd nats setup
# With bot tokens, the bots bring real activity and the demo adds no synthetic events.
bots=()
if [ -n "${TTFD__DISCORD__TOKEN:-}" ]; then ./target/release/ttfd discord & bots+=($!); fi
if [ -n "${TTFD__TELEGRAM__TOKEN:-}" ]; then ./target/release/ttfd telegram & bots+=($!); fi
if [ ${#bots[@]} -gt 0 ]; then
  ./target/release/ttfd demo --rate 0 "$@" &
  demo=$!
  trap 'kill "${bots[@]}" "$demo" 2>/dev/null || true' INT TERM EXIT
  wait "$demo"
else
  exec ./target/release/ttfd demo "$@"
fi
