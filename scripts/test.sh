#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs redis-server when missing (Debian package
# `redis-server`), makes sure PostgreSQL answers on 127.0.0.1:5432 (Debian package `postgresql`,
# installed and started when needed), then format check, clippy and rustdoc with -D warnings,
# and every test (unit, integration against real Redis and PostgreSQL, doc tests).
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

# PostgreSQL on 127.0.0.1:5432 for examples/service's test: install (Debian package
# `postgresql`) and start the cluster when it does not answer.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "PostgreSQL not found: installing the Debian package postgresql" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
  done
fi
pg_isready -h 127.0.0.1 -p 5432

# No debug info in this run's builds, the UI tests' nested build (trybuild) included: the
# suite's build and link time is most of its 10 minutes on 2 cores. Panics still name their
# file and line.
export CARGO_PROFILE_DEV_DEBUG=false

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet
cargo test --workspace
