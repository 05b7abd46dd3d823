#!/usr/bin/env bash
# Runs the real `ttfd` roles against a nats-server with the users of nats/accounts.conf,
# each role as its own user, and checks that each does its work, answers its probes
# (/healthz, /readyz, /metrics, as in the pods), and that the server logged no
# permission violation but the one provoked on purpose. Each role connects as its own
# user (nats.user, nats.password); the server restarts between roles.
#
#   nats/test-permissions-ttfd.sh [path/to/ttfd]
#
# Default binary: target/release/ttfd, else target/debug/ttfd. Needs PostgreSQL at
# TTFD_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres), where a
# scratch database is created and dropped. Discord and Telegram are local stand-ins
# (nats/fake_chat_apis.py). KEEP_WORK=1 keeps the logs. Not part of CI (it needs a
# built binary); nats/test-permissions.sh is, and checks the same permissions with a
# Python client.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

ttfd="${1:-}"
[ -n "$ttfd" ] || for b in target/release/ttfd target/debug/ttfd; do [ -x "$b" ] && ttfd="$root/$b" && break; done
[ -x "$ttfd" ] || { echo "no ttfd binary: build one (cargo build --release) or pass its path" >&2; exit 2; }
py="${PYTHON:-python3}"
server="${NATS_SERVER:-$(command -v nats-server || true)}"
[ -n "$server" ] || { echo "no nats-server on PATH (or NATS_SERVER)" >&2; exit 2; }
"$py" -c 'import nats.aio.client, msgpack' 2>/dev/null || "$py" -m pip install -q nats-py msgpack >&2
admin_url="${TTFD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="ttfd_natsperm_$$"

work=$(mktemp -d)
server_pid=""
passed=0 failed=0
# check NAME COMMAND...: runs the command, counts and prints the outcome.
check() {
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name ($SECONDS s)"
  else failed=$((failed + 1)); echo "FAIL $name ($SECONDS s)"; fi
}
refused() { ! "$@"; }
stop_server() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=""; fi; }
apis_pid=""
cleanup() {
  stop_server
  if [ -n "$apis_pid" ]; then kill "$apis_pid" 2>/dev/null || true; wait "$apis_pid" 2>/dev/null || true; fi
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

for role in OPS SYNC QUERY WEB DISCORD TELEGRAM; do
  export "TTFD_NATS_${role}_PASSWORD=test-${role,,}-$RANDOM$RANDOM"
done
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cp nats/accounts.conf "$work/"
export TTFD__NATS__URL="nats://127.0.0.1:$port"
export TTFD__DATABASE__URL="${admin_url%/*}/$db"
export TTFD__LOG__FORMAT=pretty
# Every role's /metrics, /healthz and /readyz, as in the pods (there on 0.0.0.0:9090).
metrics_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export TTFD__METRICS__LISTEN="127.0.0.1:$metrics_port"

# The server, and the ttfd processes started next connecting as user $1 (nats.user,
# nats.password; their replies come under `_INBOX.$1`).
as_user() {
  stop_server
  local role; role=$(echo "${1#ttfd-}" | tr "[:lower:]" "[:upper:]")
  export TTFD__NATS__USER="$1"
  TTFD__NATS__PASSWORD=$(printenv "TTFD_NATS_${role}_PASSWORD")
  export TTFD__NATS__PASSWORD
  cat >"$work/server.conf" <<EOF
listen: 127.0.0.1:$port
jetstream { store_dir: "$work/js" }
include accounts.conf
EOF
  "$server" -c "$work/server.conf" >>"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
  echo "nats-server did not start" >&2; exit 1
}

# A Python client with a role's credentials: $1 user, then code using `nc`.
client() {
  local user=$1 code=$2 role
  role=$(echo "${user#ttfd-}" | tr "[:lower:]" "[:upper:]")
  USER_NAME="$user" PASSWORD="$(printenv "TTFD_NATS_${role}_PASSWORD")" URL="$TTFD__NATS__URL" "$py" -c "
import asyncio, json, os, sys, msgpack, nats
async def main():
    nc = await nats.connect(os.environ['URL'], user=os.environ['USER_NAME'], password=os.environ['PASSWORD'],
                            inbox_prefix='_INBOX.' + os.environ['USER_NAME'])
    try:
$(printf '%s\n' "$code" | sed 's/^/        /')
    finally:
        await nc.close()
sys.exit(asyncio.run(main()))"
}

# The probes of docs/operations.md on a role's listener at 127.0.0.1:$1: /healthz and
# /readyz answer 200 (readyz: its dependencies answer, through its NATS user), and
# /metrics is Prometheus text with ttfd_ families.
probes() {
  eventually "curl -sf http://127.0.0.1:$1/readyz" &&
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null &&
    curl -sf "http://127.0.0.1:$1/metrics" | grep -q '^# TYPE ttfd_'
}

# Telegram registers no metric families of its own (yet): /metrics may be empty.
probes_without_families() {
  eventually "curl -sf http://127.0.0.1:$1/readyz" &&
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && curl -sf "http://127.0.0.1:$1/metrics" >/dev/null
}

# Polls `$1` (a command) for up to 20 s.
eventually() { for _ in $(seq 1 100); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }

psql "$admin_url" -qc "CREATE DATABASE $db" >/dev/null
# Discord and Telegram stand-ins: nothing here reaches the internet.
apis_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$py" nats/fake_chat_apis.py "$apis_port" >"$work/chat-apis.log" 2>&1 &
apis_pid=$!

as_user ttfd-ops
quiet() { "$@" >>"$work/commands.log" 2>&1; }
check "ops: ttfd nats setup" quiet "$ttfd" nats setup
check "ops: ttfd migrate" quiet "$ttfd" migrate

as_user ttfd-web
check "web: publishes a website event" \
  quiet "$ttfd" publish '{"id":"website:natsperm:1","platform":"website","user":"alice","kind":"game","name":"Alice","data":{"game":"chess","won":true,"xp":600}}'
check "web: a discord event is refused" refused \
  quiet "$ttfd" publish '{"id":"discord:natsperm:1","platform":"discord","user":"1","kind":"message","data":{}}'
web_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TTFD__WEB__LISTEN="127.0.0.1:$web_port" TTFD__WEB__INGEST_TOKENS__WEBSITE=natsperm-ingest-token \
  "$ttfd" web >"$work/web.log" 2>&1 &
web_pid=$!
check "web: probes and metrics on its private port" probes "$metrics_port"
check "web: ingest publishes a website event" eventually \
  "curl -sf -H 'Authorization: Bearer natsperm-ingest-token' -H 'Content-Type: application/json' \
     -d '{\"id\":\"website:natsperm:2\",\"platform\":\"website\",\"user\":\"bob\",\"kind\":\"message\",\"data\":{}}' \
     http://127.0.0.1:$web_port/api/v1/events"
kill -TERM "$web_pid"
check "web: stops cleanly" wait "$web_pid"

as_user ttfd-sync
"$ttfd" sync >"$work/sync.log" 2>&1 &
sync_pid=$!
check "sync: consumes, applies and acks" eventually "'$ttfd' user website:alice --json | grep -Eq '\"xp\": ?600'"
check "sync: probes and metrics" probes "$metrics_port"
kill -TERM "$sync_pid"
check "sync: stops cleanly" wait "$sync_pid"
check "sync: relayed the rank notice and left nothing pending" client ttfd-ops "
notify = json.loads((await nc.request('\$JS.API.STREAM.INFO.TTFD_NOTIFY', b'')).data)['state']['messages']
pending = json.loads((await nc.request('\$JS.API.CONSUMER.INFO.TTFD_EVENTS.ttfd-sync', b'')).data)
return 0 if notify >= 1 and pending['num_pending'] == 0 and pending['num_ack_pending'] == 0 else 1"

as_user ttfd-query
"$ttfd" query >"$work/query.log" 2>&1 &
query_pid=$!
eventually "grep -q 'query service ready' '$work/query.log'" || true
check "query: answers the discord user's request" client ttfd-discord "
reply = await nc.request('ttfd.query.profile', msgpack.packb({'identity': {'platform': 'website', 'user': 'alice'}}), timeout=5)
return 0 if msgpack.unpackb(reply.data).get('ok', {}).get('xp') == 600 else 1"
check "query: probes and metrics" probes "$metrics_port"
kill -TERM "$query_pid"
check "query: stops cleanly" wait "$query_pid"

as_user ttfd-discord
TTFD__DISCORD__TOKEN=MTAwMDAwMDAwMDAwMDAwMDAw.fake.token TTFD__DISCORD__GUILD_ID=1000000000000000001 \
  TTFD__DISCORD__API_URL="http://127.0.0.1:$apis_port" "$ttfd" discord >"$work/discord.log" 2>&1 &
discord_pid=$!
check "discord: creates its consumer ttfd-discord-roles (no Discord needed for that)" \
  eventually "client ttfd-ops \"return 0 if 'error' not in json.loads((await nc.request('\\\$JS.API.CONSUMER.INFO.TTFD_NOTIFY.ttfd-discord-roles', b'')).data) else 1\""
check "discord: creates its consumer ttfd-discord-seasons" \
  eventually "client ttfd-ops \"return 0 if 'error' not in json.loads((await nc.request('\\\$JS.API.CONSUMER.INFO.TTFD_NOTIFY.ttfd-discord-seasons', b'')).data) else 1\""
check "discord: probes and metrics" probes "$metrics_port"
kill -TERM "$discord_pid" 2>/dev/null || true; wait "$discord_pid" 2>/dev/null || true

if "$ttfd" telegram --help >/dev/null 2>&1; then
  as_user ttfd-telegram
  TTFD__TELEGRAM__TOKEN=123456789:AAEfaketokenfaketokenfaketoken12345 TTFD__TELEGRAM__API_URL="http://127.0.0.1:$apis_port" \
    "$ttfd" telegram >"$work/telegram.log" 2>&1 &
  telegram_pid=$!
  check "telegram: creates its consumers ttfd-telegram-rank, ttfd-telegram-seasons and its key-value bucket" \
    eventually "client ttfd-ops \"return 0 if all('error' not in r for r in [json.loads((await nc.request(s, b'')).data) for s in ['\\\$JS.API.CONSUMER.INFO.TTFD_NOTIFY.ttfd-telegram-rank', '\\\$JS.API.CONSUMER.INFO.TTFD_NOTIFY.ttfd-telegram-seasons', '\\\$JS.API.STREAM.INFO.KV_TTFD_TELEGRAM_STARTED']]) else 1\""
  check "telegram: probes" probes_without_families "$metrics_port"
  kill -TERM "$telegram_pid" 2>/dev/null || true; wait "$telegram_pid" 2>/dev/null || true
else
  echo "skip telegram: this ttfd has no telegram role"
fi
stop_server

violations=$(grep -c "Violation" "$work/server.log" || true)
expected=$(grep -c 'User "ttfd-web", Subject "ttfd.events.discord.message"' "$work/server.log" || true)
check "server: no permission violation but the provoked one ($violations logged)" \
  test "$violations" = "$expected" -a "$expected" -ge 1
if [ "$failed" -gt 0 ]; then grep "Violation" "$work/server.log" >&2 || true; tail -n 5 "$work"/*.log >&2; fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
