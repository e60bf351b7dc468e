#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs redis-server when missing (Debian package
# `redis-server`), then format check, clippy and rustdoc with -D warnings, and every test (unit,
# integration against real Redis, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: installing the Debian package redis-server" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

# No debug info in this run's builds, the UI tests' nested build (trybuild) included: the
# suite's build and link time is most of its 10 minutes on 2 cores. Panics still name their
# file and line.
export CARGO_PROFILE_DEV_DEBUG=false

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet
cargo test --workspace
