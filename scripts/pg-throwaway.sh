#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for the test suites.
#
#   scripts/pg-throwaway.sh start      start one; prints `export GP4U_TEST_DATABASE_URL=...`
#                                      and `export GP4U_PG_DIR=...` on stdout, so that
#                                      eval "$(scripts/pg-throwaway.sh start)" works by hand
#   scripts/pg-throwaway.sh stop [DIR] stop it and delete DIR (default: $GP4U_PG_DIR)
#   scripts/pg-throwaway.sh bindir     print the PostgreSQL server bin dir, exit 1 if none
#
# The cluster lives entirely in a fresh temporary directory: it listens on 127.0.0.1 only
# (never any other address), on a free port from 54329 upward, with its unix socket inside
# that directory. Its only role is `gp4u`, a superuser, with trust authentication, so the
# tests can create a database per test. As root (initdb refuses to run as root) the server
# runs as the `postgres` user when it exists, else as a system user `gp4u-pg` created here.
#
# Environment (all optional): GP4U_PG_BIN (server bin dir), GP4U_PG_USER (OS user to run
# as, when root), GP4U_PG_PORT (first port to try), GP4U_PG_START_TIMEOUT (seconds, 60).
# Diagnostics go to stderr; stdout carries only the export lines.
set -euo pipefail

readonly MARKER=.gp4u-pg-throwaway
readonly PG_ROLE=gp4u
readonly HOST=127.0.0.1

log() { printf 'pg-throwaway: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# The PostgreSQL server bin dir: $GP4U_PG_BIN, else the highest version under
# /usr/lib/postgresql/*/bin (Debian/Ubuntu), else `pg_config --bindir`, else initdb on PATH.
find_bindir() {
  local d
  if [[ -n "${GP4U_PG_BIN:-}" ]]; then
    [[ -x "$GP4U_PG_BIN/initdb" && -x "$GP4U_PG_BIN/pg_ctl" ]] || return 1
    printf '%s\n' "$GP4U_PG_BIN"
    return 0
  fi
  while IFS= read -r d; do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
  if command -v pg_config >/dev/null 2>&1; then
    d="$(pg_config --bindir 2>/dev/null || true)"
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  fi
  d="$(command -v initdb 2>/dev/null || true)"
  if [[ -n "$d" && -x "$(dirname "$d")/pg_ctl" ]]; then
    dirname "$d"
    return 0
  fi
  return 1
}

# The OS user that owns and runs the cluster: ourselves unless we are root.
pick_user() {
  if [[ $EUID -ne 0 ]]; then
    id -un
    return 0
  fi
  if [[ -n "${GP4U_PG_USER:-}" ]]; then
    id -u "$GP4U_PG_USER" >/dev/null 2>&1 || die "GP4U_PG_USER=$GP4U_PG_USER does not exist"
    printf '%s\n' "$GP4U_PG_USER"
    return 0
  fi
  if id -u postgres >/dev/null 2>&1; then
    echo postgres
    return 0
  fi
  if ! id -u gp4u-pg >/dev/null 2>&1; then
    log "creating system user gp4u-pg to run the throwaway cluster (initdb refuses root)"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      --user-group gp4u-pg >&2 || die "could not create system user gp4u-pg"
  fi
  echo gp4u-pg
}

# Run a command as the cluster owner, from a directory it can enter.
as_owner() {
  local user="$1" dir="$2"
  shift 2
  if [[ $EUID -eq 0 && "$user" != root ]]; then
    (cd "$dir" && LC_ALL=C runuser -u "$user" -- "$@")
  else
    (cd "$dir" && LC_ALL=C "$@")
  fi
}

port_in_use() {
  local port="$1"
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Htln "sport = :$port" 2>/dev/null)" ]] && return 0
  fi
  # Nothing answering on loopback, as far as we can see; a race is caught by the bind retry.
  timeout 1 bash -c "exec 3<>/dev/tcp/$HOST/$port" 2>/dev/null && return 0
  return 1
}

next_free_port() {
  local port="$1" last=$(($1 + 200))
  while ((port <= last)); do
    if ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
    port=$((port + 1))
  done
  return 1
}

cleanup_dir() {
  local bindir="$1" user="$2" dir="$3"
  if [[ -f "$dir/data/postmaster.pid" ]]; then
    as_owner "$user" "$dir" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 10 stop \
      >/dev/null 2>&1 || true
  fi
  rm -rf -- "$dir"
}

# Globals, so that the EXIT trap set in cmd_start can still see them.
S_BINDIR='' S_USER='' S_DIR=''

cmd_start() {
  local bindir user base dir port attempt timeout_s started=0 t0
  t0=$SECONDS
  bindir="$(find_bindir)" || die "no PostgreSQL server binaries (initdb, pg_ctl) found;" \
    "install them (Debian: apt-get install postgresql) or set GP4U_PG_BIN"
  user="$(pick_user)"
  timeout_s="${GP4U_PG_START_TIMEOUT:-60}"

  # The owner must be able to reach the directory: as root, $TMPDIR may be under /root.
  base="${TMPDIR:-/tmp}"
  if [[ $EUID -eq 0 && "$user" != root ]] && ! runuser -u "$user" -- test -x "$base"; then
    base=/tmp
  fi
  dir="$(mktemp -d "$base/gp4u-pg.XXXXXXXX")"
  : >"$dir/$MARKER"
  if [[ $EUID -eq 0 && "$user" != root ]]; then
    chown -R "$user:" "$dir"
  fi
  chmod 700 "$dir"
  # From here on, a failure removes the directory again.
  S_BINDIR="$bindir" S_USER="$user" S_DIR="$dir"
  trap 'cleanup_dir "$S_BINDIR" "$S_USER" "$S_DIR"' EXIT

  log "initdb ($bindir, as $user) in $dir"
  if ! as_owner "$user" "$dir" "$bindir/initdb" -D "$dir/data" -U "$PG_ROLE" --auth=trust \
    --encoding=UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1; then
    tail -n 30 "$dir/initdb.log" >&2 || true
    die "initdb failed"
  fi
  cat >>"$dir/data/postgresql.conf" <<EOF

# gp4u throwaway test cluster
listen_addresses = '$HOST'
unix_socket_directories = '$dir'
max_connections = 300
shared_buffers = 128MB
EOF

  port="${GP4U_PG_PORT:-54329}"
  for attempt in 1 2 3 4 5; do
    port="$(next_free_port "$port")" || die "no free port from ${GP4U_PG_PORT:-54329} upward"
    log "starting on $HOST:$port (attempt $attempt)"
    : >"$dir/server.log"
    if [[ $EUID -eq 0 && "$user" != root ]]; then
      chown "$user:" "$dir/server.log"
    fi
    if as_owner "$user" "$dir" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" \
      -o "-p $port" -w -t "$timeout_s" start >&2; then
      started=1
      break
    fi
    if grep -q -e 'Address already in use' -e 'could not create lock file' \
      "$dir/server.log" 2>/dev/null; then
      log "port $port was taken meanwhile; trying the next one"
      port=$((port + 1))
      continue
    fi
    break
  done
  if ((!started)); then
    log "server log tail ($dir/server.log):"
    tail -n 40 "$dir/server.log" >&2 || true
    die "PostgreSQL did not start"
  fi

  # Ready over TCP on loopback, as the tests will connect (bounded wait).
  local deadline=$((SECONDS + timeout_s))
  until "$bindir/pg_isready" -q -h "$HOST" -p "$port" -U "$PG_ROLE" -d postgres -t 2; do
    if ((SECONDS >= deadline)); then
      log "server log tail ($dir/server.log):"
      tail -n 40 "$dir/server.log" >&2 || true
      die "PostgreSQL on $HOST:$port not ready after ${timeout_s}s"
    fi
    sleep 0.2
  done

  trap - EXIT
  log "ready on $HOST:$port in $((SECONDS - t0))s (stop with: $0 stop $dir)"
  printf 'export GP4U_TEST_DATABASE_URL=%q\n' "postgres://$PG_ROLE@$HOST:$port/postgres"
  printf 'export GP4U_PG_DIR=%q\n' "$dir"
}

cmd_stop() {
  local dir="${1:-${GP4U_PG_DIR:-}}" bindir user
  [[ -n "$dir" ]] || die "usage: $0 stop DIR (or set GP4U_PG_DIR)"
  if [[ ! -e "$dir" ]]; then
    log "$dir is already gone"
    return 0
  fi
  # Never delete a directory this script did not create.
  [[ -f "$dir/$MARKER" ]] || die "$dir is not a throwaway cluster directory (no $MARKER)"
  user="$(stat -c %U "$dir")"
  if [[ -f "$dir/data/postmaster.pid" ]]; then
    bindir="$(find_bindir)" || die "no PostgreSQL binaries to stop the server with"
    if ! as_owner "$user" "$dir" "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop \
      >/dev/null 2>&1; then
      log "fast shutdown failed; forcing an immediate one"
      as_owner "$user" "$dir" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop \
        >/dev/null 2>&1 || true
    fi
    if [[ -f "$dir/data/postmaster.pid" ]]; then
      local pid
      pid="$(head -n 1 "$dir/data/postmaster.pid")"
      if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        log "postmaster $pid still running; killing it"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
  fi
  rm -rf -- "$dir"
  log "stopped and removed $dir"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop "${2:-}" ;;
  bindir) find_bindir ;;
  *)
    echo "usage: $0 start | stop [DIR] | bindir" >&2
    exit 2
    ;;
esac
