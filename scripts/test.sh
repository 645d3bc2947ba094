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
#
# The Docker suites (gp4u-agent) need a registry and test images, given by GP4U_TEST_IMAGE,
# GP4U_TEST_IMAGE_DIGEST, GP4U_TEST_OTHER_DIGEST and GP4U_TEST_REGISTRY. If GP4U_TEST_IMAGE is
# unset and Docker is usable (`docker info` works), this starts a throwaway registry on
# 127.0.0.1 with the images pushed to it (scripts/test-images.sh), exports those variables,
# and stops it on exit, removing its images and leftover job containers. Without a usable
# Docker (or if that setup fails) it warns loudly and the Docker suites skip; in CI it fails
# instead. When they will run, it prints a line starting `test.sh: GP4U-DOCKER-ENABLED:`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'test.sh: %s\n' "$*" >&2; }

# A URL with any password hidden, for the log.
redact() { sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }

PG_DIR=""
IMAGES_DIR=""
# shellcheck disable=SC2317  # invoked through the EXIT trap
stop_pg() {
  local status=$?
  trap - EXIT INT TERM HUP
  if [[ -n "$IMAGES_DIR" ]]; then
    scripts/test-images.sh stop "$IMAGES_DIR" ||
      say "warning: could not stop the test registry in $IMAGES_DIR"
  fi
  if [[ -n "$PG_DIR" ]]; then
    scripts/pg-throwaway.sh stop "$PG_DIR" || say "warning: could not stop the cluster in $PG_DIR"
  fi
  exit "$status"
}
arm_cleanup() {
  trap stop_pg EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

if [[ -n "${GP4U_TEST_DATABASE_URL:-}" ]]; then
  say "GP4U-PG-ENABLED: using the given GP4U_TEST_DATABASE_URL=$(redact "$GP4U_TEST_DATABASE_URL")"
elif bindir="$(scripts/pg-throwaway.sh bindir 2>/dev/null)"; then
  say "PostgreSQL: starting a throwaway cluster ($bindir)"
  arm_cleanup
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

docker_skipped() {
  {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!! WARNING: $1"
    echo "!! The Docker test suites (gp4u-agent: pull by digest, hardened containers) will"
    echo "!! be SKIPPED. Make Docker usable here (\`docker info\` must work; as non-root,"
    echo "!! join the docker group), see \`scripts/test-images.sh status\`, or set"
    echo "!! GP4U_TEST_IMAGE, GP4U_TEST_IMAGE_DIGEST, GP4U_TEST_OTHER_DIGEST, GP4U_TEST_REGISTRY."
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
  } >&2
  if [[ "${CI:-}" == true ]]; then
    say "error: CI=true and no Docker test images: refusing to skip the Docker suites"
    exit 1
  fi
}

if [[ -n "${GP4U_TEST_IMAGE:-}" ]]; then
  say "GP4U-DOCKER-ENABLED: using the given GP4U_TEST_IMAGE=$GP4U_TEST_IMAGE" \
    "GP4U_TEST_IMAGE_DIGEST=${GP4U_TEST_IMAGE_DIGEST:-} GP4U_TEST_OTHER_DIGEST=${GP4U_TEST_OTHER_DIGEST:-}"
elif timeout 60 docker info >/dev/null 2>&1; then
  say "Docker: starting a throwaway registry with the test images (scripts/test-images.sh)"
  arm_cleanup
  if env_lines="$(scripts/test-images.sh start)"; then
    eval "$env_lines"
    IMAGES_DIR="$GP4U_TEST_REGISTRY_DIR"
    export GP4U_TEST_REGISTRY GP4U_TEST_IMAGE GP4U_TEST_IMAGE_DIGEST GP4U_TEST_OTHER_DIGEST
    export GP4U_TEST_REGISTRY_DIR
    say "GP4U-DOCKER-ENABLED: throwaway registry, GP4U_TEST_IMAGE=$GP4U_TEST_IMAGE" \
      "GP4U_TEST_IMAGE_DIGEST=$GP4U_TEST_IMAGE_DIGEST GP4U_TEST_OTHER_DIGEST=$GP4U_TEST_OTHER_DIGEST"
  else
    docker_skipped "Docker is usable, but the test registry and images could not be set up (see above)."
  fi
else
  docker_skipped "Docker is not usable here (\`docker info\` fails) and GP4U_TEST_IMAGE is unset."
fi

say "running: cargo test --workspace $*"
status=0
cargo test --workspace "$@" || status=$?
exit "$status"
