#!/usr/bin/env bash
# Telemetry ingestion benchmark on PostgreSQL, with PostgreSQL's own COPY and multi-row INSERT
# of the same rows as the ceiling (crates/gp4u-server/benches/telemetry.rs).
#
#   scripts/bench-telemetry.sh [bench arguments, e.g. --jobs 20000 --nodes 2000 --seconds 10 --concurrency 64]
#
# Prints the machine, builds the bench (release profile), starts a throwaway PostgreSQL cluster
# (stopped on exit) unless GP4U_TEST_DATABASE_URL is set, and runs it. Everything is local:
# the server listens on 127.0.0.1, PostgreSQL on 127.0.0.1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'bench-telemetry.sh: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

PG_DIR=""
# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  if [[ -n "$PG_DIR" ]]; then
    scripts/pg-throwaway.sh stop "$PG_DIR" || say "warning: could not stop the cluster in $PG_DIR"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

echo "== machine =="
echo "date:       $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "nproc:      $(nproc)"
echo "cpu:        $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory:     $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
echo "commit:     $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
echo "loadavg:    $(cut -d' ' -f1-3 /proc/loadavg)"
echo "arguments:  $*"
echo

cargo bench --no-run -p gp4u-server --bench telemetry >/dev/null 2>&1 ||
  cargo bench --no-run -p gp4u-server --bench telemetry || die "the bench did not build"

if [[ -n "${GP4U_TEST_DATABASE_URL:-}" ]]; then
  say "using the given GP4U_TEST_DATABASE_URL"
else
  env_lines="$(scripts/pg-throwaway.sh start)" || die "could not start a throwaway cluster"
  eval "$env_lines"
  PG_DIR="$GP4U_PG_DIR"
  export GP4U_TEST_DATABASE_URL
fi
echo "postgres:   $("$(scripts/pg-throwaway.sh bindir)/postgres" --version 2>/dev/null || echo '?')"
echo
cargo bench -p gp4u-server --bench telemetry -- "$@"
