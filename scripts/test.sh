#!/usr/bin/env bash
# The test command: starts what the tests need, then runs every test of the workspace
# (unit, property and end-to-end tests against real PostgreSQL and NATS).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
bash scripts/validate-deploy.sh   # Dockerfile, k8s/ and nats/ validated offline (no cluster needed)
bash scripts/browser.sh   # Chromium + ChromeDriver for workers/tests/it/browser.rs (skips loudly if impossible)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features "$@"
