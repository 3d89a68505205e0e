#!/usr/bin/env bash
# The one test command (README, and CI through .ci/run): installs whatever a fresh
# Debian 12 machine lacks (PostgreSQL 15 server binaries, client libraries), then checks
# formatting and lints and runs every test against real Postgres servers started by the
# test harness.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --all-targets --locked
