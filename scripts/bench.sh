#!/usr/bin/env bash
# Submission-path benchmark, both engines, with PostgreSQL's own insert rate as the baseline.
#
#   scripts/bench.sh [--seconds N (10)] [--concurrency N (32)] [--warmup-seconds N (2)]
#
# In one run: prints the machine, builds the bench (`cargo bench --no-run`, release profile),
# starts a throwaway PostgreSQL cluster (scripts/pg-throwaway.sh, stopped on exit) unless
# GP4U_TEST_DATABASE_URL is set, runs crates/gp4u-server/benches/submit.rs on SQLite and on
# PostgreSQL, then runs pgbench against the same cluster: one single-row INSERT per transaction
# into a table shaped like `jobs`, with the same client count and duration. It ends with a
# summary: accepted/s, p50/p99, the pgbench tps, the ratio, and each goal met or missed.
#
# Everything is local: the server listens on 127.0.0.1, PostgreSQL on 127.0.0.1.
# Exit status: 0 when every step ran and every submission was accepted (goals may still be
# missed: the summary says so); 1 when a step failed; 2 when some submissions were not
# accepted. With BENCH_STRICT=1, a missed goal exits 3.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_PER_RUN=10
CONCURRENCY=32
WARMUP=2

say() { printf 'bench.sh: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}
usage() { sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --seconds) SECONDS_PER_RUN="${2:?--seconds needs a value}" && shift 2 ;;
    --concurrency) CONCURRENCY="${2:?--concurrency needs a value}" && shift 2 ;;
    --warmup-seconds) WARMUP="${2:?--warmup-seconds needs a value}" && shift 2 ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && die "unknown argument $1" ;;
  esac
done
for value in "$SECONDS_PER_RUN" "$CONCURRENCY" "$WARMUP"; do
  [[ "$value" =~ ^[0-9]+$ ]] || die "not a whole number: $value"
done
((SECONDS_PER_RUN >= 1 && SECONDS_PER_RUN <= 600)) || die "--seconds must be 1..600"
((CONCURRENCY >= 1 && CONCURRENCY <= 250)) || die "--concurrency must be 1..250"
((WARMUP <= 60)) || die "--warmup-seconds must be 0..60"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gp4u-bench.XXXXXXXX")"
PG_DIR=""
BENCH_DB=""
# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  # The pgbench database, if a failure left it behind (a throwaway cluster goes whole).
  if [[ -n "$BENCH_DB" && -z "$PG_DIR" ]]; then
    "$PSQL" "$GP4U_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" || true
  fi
  if [[ -n "$PG_DIR" ]]; then
    scripts/pg-throwaway.sh stop "$PG_DIR" || say "warning: could not stop the cluster in $PG_DIR"
  fi
  rm -rf -- "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Busy cores on the whole machine over one second (anything else running skews the figures).
background_load() {
  local t1 i1 t2 i2
  read -r t1 i1 < <(awk '/^cpu / {t=0; for (i=2; i<=9; i++) t+=$i; print t, $5+$6}' /proc/stat)
  sleep 1
  read -r t2 i2 < <(awk '/^cpu / {t=0; for (i=2; i<=9; i++) t+=$i; print t, $5+$6}' /proc/stat)
  awk -v t="$((t2 - t1))" -v i="$((i2 - i1))" -v n="$(nproc)" \
    'BEGIN { if (t <= 0) t = 1; printf "%.2f", (t - i) / t * n }'
}

check_quiet() {
  local load
  load="$(background_load)"
  echo "background load before $1: $load busy cores (of $(nproc))"
  if awk -v l="$load" 'BEGIN { exit !(l > 0.2) }'; then
    echo "!!! WARNING: the machine is not idle before $1 ($load cores busy); figures will be low"
    top -b -n1 -o %CPU | sed -n '7,12p' || true
  fi
}

echo "== machine =="
echo "date:       $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "nproc:      $(nproc)"
echo "cpu:        $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory:     $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
echo "kernel:     $(uname -sr)"
echo "rustc:      $(rustc --version 2>/dev/null || echo '?')"
echo "commit:     $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
echo "loadavg:    $(cut -d' ' -f1-3 /proc/loadavg)"
echo "settings:   --seconds $SECONDS_PER_RUN --concurrency $CONCURRENCY --warmup-seconds $WARMUP --gpus 20000 (pinned jobs: Atlas places them while the load runs, so each needs a GPU of its own)"
echo

echo "== build (cargo bench --no-run -p gp4u-server --bench submit) =="
cargo bench --no-run -p gp4u-server --bench submit --message-format=json-render-diagnostics \
  >"$WORK/build.json" || die "the bench did not build"
EXE="$(sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' "$WORK/build.json" | tail -n 1)"
[[ -n "$EXE" && -x "$EXE" ]] || die "could not find the built bench executable"
echo "bench executable: $EXE"
echo

if [[ -n "${GP4U_TEST_DATABASE_URL:-}" ]]; then
  say "using the given GP4U_TEST_DATABASE_URL"
else
  scripts/pg-throwaway.sh bindir >/dev/null 2>&1 ||
    die "no PostgreSQL server binaries; install them or set GP4U_TEST_DATABASE_URL"
  env_lines="$(scripts/pg-throwaway.sh start)" || die "could not start a throwaway cluster"
  eval "$env_lines"
  PG_DIR="$GP4U_PG_DIR"
  export GP4U_TEST_DATABASE_URL
fi
if PG_BIN="$(scripts/pg-throwaway.sh bindir 2>/dev/null)" && [[ -x "$PG_BIN/pgbench" ]]; then
  PGBENCH="$PG_BIN/pgbench" PSQL="$PG_BIN/psql"
else
  PGBENCH="$(command -v pgbench)" || die "no pgbench"
  PSQL="$(command -v psql)" || die "no psql"
fi

# GP4U_TEST_DATABASE_URL with its database replaced by $1.
database_url() {
  local url="$GP4U_TEST_DATABASE_URL" query=""
  if [[ "$url" == *\?* ]]; then
    query="?${url#*\?}"
    url="${url%%\?*}"
  fi
  if [[ "${url#*://}" == */* ]]; then
    url="${url%/*}"
  fi
  printf '%s/%s%s\n' "$url" "$1" "$query"
}

echo "== PostgreSQL =="
echo "server:     $("$PSQL" "$GP4U_TEST_DATABASE_URL" -Atqc 'SELECT version()')"
echo "settings:   $("$PSQL" "$GP4U_TEST_DATABASE_URL" -Atqc "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections', 'wal_level', 'full_page_writes')")"
echo

STATUS=0
run_bench() {
  local engine="$1" rc=0 # pipefail: rc is the bench's status (tee's is 0)
  echo "== submit bench: $engine =="
  check_quiet "the $engine bench"
  "$EXE" --bench --engine "$engine" --seconds "$SECONDS_PER_RUN" \
    --concurrency "$CONCURRENCY" --warmup-seconds "$WARMUP" --gpus 20000 | tee "$WORK/$engine.out" || rc=$?
  case "$rc" in
    0) ;;
    2) STATUS=2 ;;
    *) die "the $engine bench failed (exit $rc)" ;;
  esac
  echo
}
run_bench sqlite
run_bench postgres

echo "== pgbench baseline: one single-row INSERT into a jobs-shaped table per transaction =="
BENCH_DB="gp4u_pgbench_$$"
BENCH_URL="$(database_url "$BENCH_DB")"
"$PSQL" "$GP4U_TEST_DATABASE_URL" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $BENCH_DB"
drop_bench_db() {
  "$PSQL" "$GP4U_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" || true
  BENCH_DB=""
}
# The tables as in crates/gp4u-store/migrations/postgres/0001_init.sql (jobs with its
# foreign key and both indexes), and the one owner the rows reference.
"$PSQL" "$BENCH_URL" -v ON_ERROR_STOP=1 -q <<'SQL'
CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    role            TEXT NOT NULL,
    clearance       BIGINT NOT NULL,
    active          BIGINT NOT NULL DEFAULT 1,
    university      BIGINT NOT NULL DEFAULT 0,
    region          TEXT,
    credit_micros   BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL
);
INSERT INTO users (id, name, role, clearance, created_at) VALUES ('usr_bench', 'bench', 'customer', 1, 0);
CREATE TABLE jobs (
    id                   TEXT PRIMARY KEY,
    owner_id             TEXT NOT NULL REFERENCES users(id),
    name                 TEXT NOT NULL,
    status               TEXT NOT NULL,
    failure_reason       TEXT,
    ended_by             TEXT,
    workload_type        TEXT NOT NULL,
    gpu_id               TEXT,
    node_id              TEXT,
    gpu_name             TEXT,
    gpu_region           TEXT,
    manifest             TEXT NOT NULL,
    price_micros         BIGINT NOT NULL,
    cost_estimate_micros BIGINT NOT NULL,
    placement            TEXT,
    latest_metrics       TEXT,
    anomalies            TEXT NOT NULL DEFAULT '[]',
    exit_code            BIGINT,
    energy_kwh           DOUBLE PRECISION,
    carbon_kg            DOUBLE PRECISION,
    renewable_pct        DOUBLE PRECISION,
    created_at           BIGINT NOT NULL,
    started_at           BIGINT,
    ended_at             BIGINT,
    version              BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX jobs_owner_created ON jobs(owner_id, created_at DESC);
CREATE INDEX jobs_status ON jobs(status);
SQL
SHA="$(printf 'a%.0s' {1..64})"
MANIFEST='{"name":"BERT fine-tune — medical NLP","target":{"pinned":"gpu_aaaaaaaaaaaaaaaaaaaaaaaaaa"},"workload_type":"TRAINING","expected_duration":4000000,"docker_image":"registry.example/org/bert","docker_image_sha256":"'"$SHA"'","command":["python","train.py"],"env":{"EPOCHS":"3"},"inputs":[],"ram_limit_gb":16.0,"max_retries":0}'
cat >"$WORK/insert.sql" <<SQL
\\set r random(1, 2000000000)
INSERT INTO jobs (id, owner_id, name, status, workload_type, gpu_id, node_id, gpu_name, gpu_region, manifest, price_micros, cost_estimate_micros, anomalies, created_at, version) VALUES ('job_' || :client_id || '_' || :r || '_' || md5(random()::text), 'usr_bench', 'BERT fine-tune — medical NLP', 'PENDING', 'TRAINING', 'gpu_aaaaaaaaaaaaaaaaaaaaaaaaaa', NULL, 'RTX 4090', 'us-east-1', '$MANIFEST', 1500000, 6000000, '[]', (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 1);
SQL
echo "script ($WORK/insert.sql):"
sed 's/^/  /' "$WORK/insert.sql"
PGBENCH_ARGS=(-n -f "$WORK/insert.sql" -c "$CONCURRENCY" -j "$((CONCURRENCY < 2 ? CONCURRENCY : 2))")
if ((WARMUP > 0)); then
  "$PGBENCH" "${PGBENCH_ARGS[@]}" -T "$WARMUP" "$BENCH_URL" >/dev/null 2>&1 ||
    { drop_bench_db; die "the pgbench warmup failed"; }
fi
check_quiet "pgbench"
echo "command: pgbench ${PGBENCH_ARGS[*]} -T $SECONDS_PER_RUN <url of $BENCH_DB>"
if ! "$PGBENCH" "${PGBENCH_ARGS[@]}" -T "$SECONDS_PER_RUN" "$BENCH_URL" >"$WORK/pgbench.out" 2>&1; then
  cat "$WORK/pgbench.out"
  drop_bench_db
  die "pgbench failed"
fi
sed 's/^/  /' "$WORK/pgbench.out"
ROWS="$("$PSQL" "$BENCH_URL" -Atqc 'SELECT count(*) FROM jobs')"
drop_bench_db
TPS="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$WORK/pgbench.out" | head -n 1)"
PG_LAT="$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$WORK/pgbench.out" | head -n 1)"
[[ -n "$TPS" ]] || die "could not read the tps from pgbench's output"
TPS="$(printf '%.1f' "$TPS")"
echo "pgbench: tps=$TPS latency_avg_ms=${PG_LAT:-?} rows=$ROWS"
echo

# A field of a bench's RESULT line.
field() { sed -n "s/^RESULT .* $2=\([^ ]*\).*/\1/p" "$WORK/$1.out" | head -n 1; }
for engine in sqlite postgres; do
  [[ -n "$(field "$engine" accepted_per_s)" ]] || die "no RESULT line from the $engine bench"
done
SQ_RATE="$(field sqlite accepted_per_s)" PG_RATE="$(field postgres accepted_per_s)"
PG_P99="$(field postgres p99_ms)"
RATIO="$(awk -v a="$PG_RATE" -v b="$TPS" 'BEGIN { printf "%.3f", a / b }')"
verdict() { if awk "BEGIN { exit !($1) }"; then echo MET; else echo MISSED; fi; }
G_RATE="$(verdict "$PG_RATE >= 1000")"
G_P99="$(verdict "$PG_P99 <= 20")"
G_RATIO="$(verdict "$RATIO >= 0.30")"

echo "== summary (${SECONDS_PER_RUN} s per run, ${CONCURRENCY} clients, $(nproc) cores) =="
printf '%-10s %12s %9s %9s %9s %7s\n' engine accepted/s p50_ms p90_ms p99_ms errors
for engine in sqlite postgres; do
  printf '%-10s %12s %9s %9s %9s %7s\n' "$engine" "$(field "$engine" accepted_per_s)" \
    "$(field "$engine" p50_ms)" "$(field "$engine" p90_ms)" "$(field "$engine" p99_ms)" \
    "$(field "$engine" errors)"
done
printf '%-10s %12s %9s %9s %9s %7s\n' pgbench "$TPS" - - - -
echo "pgbench latency average: ${PG_LAT:-?} ms"
echo "ratio postgres accepted/s / pgbench tps: $RATIO"
echo "goal >= 1000 accepted/s on PostgreSQL:  $PG_RATE  -> $G_RATE"
echo "goal p99 <= 20 ms on PostgreSQL:        $PG_P99  -> $G_P99"
echo "goal >= 30 % of the pgbench baseline:   $(awk -v r="$RATIO" 'BEGIN { printf "%.1f %%", r * 100 }')  -> $G_RATIO"
echo "(SQLite for comparison: $SQ_RATE accepted/s, p99 $(field sqlite p99_ms) ms)"
echo "SUMMARY sqlite_accepted_per_s=$SQ_RATE postgres_accepted_per_s=$PG_RATE postgres_p99_ms=$PG_P99 pgbench_tps=$TPS ratio=$RATIO goal_rate=$G_RATE goal_p99=$G_P99 goal_ratio=$G_RATIO"
if ((STATUS != 0)); then
  echo "!!! some submissions were not accepted: see the !!! lines above"
  exit "$STATUS"
fi
if [[ "${BENCH_STRICT:-}" == 1 && "$G_RATE$G_P99$G_RATIO" == *MISSED* ]]; then
  exit 3
fi
