-- Stage 4: Russian-Doll telemetry, Tutela's verdicts, stakes and slashes, retries, fencing.

-- The telemetry time series (clamped values only), for energy accounting and charts.
CREATE TABLE telemetry (
    id                      BIGSERIAL PRIMARY KEY,
    job_id                  TEXT NOT NULL,
    node_id                 TEXT NOT NULL,
    at_ms                   BIGINT NOT NULL,
    gpu_utilization_pct     DOUBLE PRECISION NOT NULL,
    vram_used_gb            DOUBLE PRECISION NOT NULL,
    vram_allocated_gb       DOUBLE PRECISION NOT NULL,
    power_draw_watts        DOUBLE PRECISION NOT NULL,
    temperature_c           DOUBLE PRECISION NOT NULL,
    outbound_bytes_per_sec  DOUBLE PRECISION NOT NULL,
    unique_dest_ips         BIGINT,
    foreign_gpu_processes   BIGINT,
    throttling              BIGINT,
    inferred_pattern        TEXT,
    emulated                BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX telemetry_job_at ON telemetry(job_id, at_ms);

-- Every anomaly verdict, as stored, published (outbox) and sealed.
CREATE TABLE anomalies (
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    rule            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    kill            BIGINT NOT NULL,
    attribution     TEXT NOT NULL,
    evidence        TEXT NOT NULL,
    observed        DOUBLE PRECISION NOT NULL,
    threshold       DOUBLE PRECISION NOT NULL,
    at_ms           BIGINT NOT NULL
);
CREATE INDEX anomalies_job ON anomalies(job_id, at_ms);

-- Slashes: at most one of a kind per (node, job); node-level ones carry job_id ''.
CREATE TABLE slashes (
    id                  TEXT PRIMARY KEY,
    node_id             TEXT NOT NULL,
    job_id              TEXT NOT NULL,
    kind                TEXT NOT NULL,
    severity            TEXT NOT NULL,
    stake_taken_micros  BIGINT NOT NULL,
    trust_before        DOUBLE PRECISION NOT NULL,
    trust_after         DOUBLE PRECISION NOT NULL,
    evidence            TEXT NOT NULL,
    at_ms               BIGINT NOT NULL
);
CREATE UNIQUE INDEX slashes_once ON slashes(node_id, job_id, kind);

ALTER TABLE provider_nodes ADD COLUMN stake_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE provider_nodes ADD COLUMN endpoint TEXT;
ALTER TABLE provider_nodes ADD COLUMN ejected_at BIGINT;
ALTER TABLE provider_nodes ADD COLUMN ejected_reason TEXT;
ALTER TABLE provider_nodes ADD COLUMN visibility TEXT NOT NULL DEFAULT 'UNCHECKED';
ALTER TABLE provider_nodes ADD COLUMN visibility_checked_at BIGINT;

-- When the job's last telemetry packet arrived (the heartbeat).
ALTER TABLE jobs ADD COLUMN last_telemetry_at BIGINT;
-- Provider-fault retries used, and every attempt that ended on a node: [{node_id, reason, at_ms}].
ALTER TABLE jobs ADD COLUMN retries BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';
-- Every telemetry batch rewrites last_telemetry_at and latest_metrics (neither indexed): room
-- on each page lets that update stay on its page (a HOT update, no index writes).
ALTER TABLE jobs SET (fillfactor = 70);

-- Customers whose container was caught mining or scanning.
ALTER TABLE users ADD COLUMN flagged_at BIGINT;
ALTER TABLE users ADD COLUMN flagged_reason TEXT;
