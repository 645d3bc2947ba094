#!/usr/bin/env bash
# Run the whole test suite: `scripts/test.sh [extra cargo test args]`.
#
# The storage suites run on SQLite and, when GP4U_TEST_DATABASE_URL is set, on PostgreSQL.
# If it is unset and PostgreSQL server binaries are installed (Debian: apt-get install
# postgresql), this starts a throwaway cluster on 127.0.0.1 (scripts/pg-throwaway.sh),
# points GP4U_TEST_DATABASE_URL at it, and stops and deletes it on exit, whatever happens.
# Without the binaries it warns loudly and runs the SQLite side only (in CI, CI=true, it
# fails instead: the PostgreSQL suites must not be skipped there). When the PostgreSQL
# suites will run, it prints a line starting `test.sh: GP4U-PG-ENABLED:` (.ci/run checks it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'test.sh: %s\n' "$*" >&2; }

# A URL with any password hidden, for the log.
redact() { sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }

PG_DIR=""
# shellcheck disable=SC2317  # invoked through the EXIT trap
stop_pg() {
  local status=$?
  trap - EXIT INT TERM HUP
  if [[ -n "$PG_DIR" ]]; then
    scripts/pg-throwaway.sh stop "$PG_DIR" || say "warning: could not stop the cluster in $PG_DIR"
  fi
  exit "$status"
}

if [[ -n "${GP4U_TEST_DATABASE_URL:-}" ]]; then
  say "GP4U-PG-ENABLED: using the given GP4U_TEST_DATABASE_URL=$(redact "$GP4U_TEST_DATABASE_URL")"
elif bindir="$(scripts/pg-throwaway.sh bindir 2>/dev/null)"; then
  say "PostgreSQL: starting a throwaway cluster ($bindir)"
  trap stop_pg EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  env_lines="$(scripts/pg-throwaway.sh start)" || {
    say "error: could not start a throwaway PostgreSQL cluster (see above)."
    say "Set GP4U_TEST_DATABASE_URL to a server you provide, or fix the error above."
    exit 1
  }
  eval "$env_lines"
  PG_DIR="$GP4U_PG_DIR"
  export GP4U_TEST_DATABASE_URL
  say "GP4U-PG-ENABLED: throwaway cluster, GP4U_TEST_DATABASE_URL=$GP4U_TEST_DATABASE_URL"
else
  {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!! WARNING: no PostgreSQL server binaries found and GP4U_TEST_DATABASE_URL unset."
    echo "!! The PostgreSQL test suites will be SKIPPED; only SQLite is tested."
    echo "!! Install them (Debian: apt-get install postgresql) or set"
    echo "!! GP4U_TEST_DATABASE_URL=postgres://USER@HOST:PORT/DB (a role with CREATEDB)."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
  } >&2
  if [[ "${CI:-}" == true ]]; then
    say "error: CI=true and no PostgreSQL: refusing to skip the PostgreSQL suites"
    exit 1
  fi
fi

say "running: cargo test --workspace $*"
status=0
cargo test --workspace "$@" || status=$?
exit "$status"
