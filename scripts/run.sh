#!/usr/bin/env bash
# The main job on this machine: starts PostgreSQL and NATS when they are not running,
# migrates, provisions the streams and runs the demo pipeline with synthetic traffic.
# Extra arguments go to `ttfd demo` (see `ttfd demo --help`).
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
exec ./target/release/ttfd demo "$@"
