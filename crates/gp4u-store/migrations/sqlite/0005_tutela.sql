-- Stage 4: Russian-Doll telemetry, Tutela's verdicts, stakes and slashes, retries, fencing.

-- The telemetry time series (clamped values only), for energy accounting and charts.
CREATE TABLE telemetry (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id                  TEXT NOT NULL,
    node_id                 TEXT NOT NULL,
    at_ms                   INTEGER NOT NULL,
    gpu_utilization_pct     REAL NOT NULL,
    vram_used_gb            REAL NOT NULL,
    vram_allocated_gb       REAL NOT NULL,
    power_draw_watts        REAL NOT NULL,
    temperature_c           REAL NOT NULL,
    outbound_bytes_per_sec  REAL NOT NULL,
    unique_dest_ips         INTEGER,
    foreign_gpu_processes   INTEGER,
    throttling              INTEGER,
    inferred_pattern        TEXT,
    emulated                INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX telemetry_job_at ON telemetry(job_id, at_ms);

-- Every anomaly verdict, as stored, published (outbox) and sealed.
CREATE TABLE anomalies (
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    rule            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    kill            INTEGER NOT NULL,
    attribution     TEXT NOT NULL,
    evidence        TEXT NOT NULL,
    observed        REAL NOT NULL,
    threshold       REAL NOT NULL,
    at_ms           INTEGER NOT NULL
);
CREATE INDEX anomalies_job ON anomalies(job_id, at_ms);

-- Slashes: at most one of a kind per (node, job); node-level ones carry job_id ''.
CREATE TABLE slashes (
    id                  TEXT PRIMARY KEY,
    node_id             TEXT NOT NULL,
    job_id              TEXT NOT NULL,
    kind                TEXT NOT NULL,
    severity            TEXT NOT NULL,
    stake_taken_micros  INTEGER NOT NULL,
    trust_before        REAL NOT NULL,
    trust_after         REAL NOT NULL,
    evidence            TEXT NOT NULL,
    at_ms               INTEGER NOT NULL
);
CREATE UNIQUE INDEX slashes_once ON slashes(node_id, job_id, kind);

ALTER TABLE provider_nodes ADD COLUMN stake_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE provider_nodes ADD COLUMN endpoint TEXT;
ALTER TABLE provider_nodes ADD COLUMN ejected_at INTEGER;
ALTER TABLE provider_nodes ADD COLUMN ejected_reason TEXT;
ALTER TABLE provider_nodes ADD COLUMN visibility TEXT NOT NULL DEFAULT 'UNCHECKED';
ALTER TABLE provider_nodes ADD COLUMN visibility_checked_at INTEGER;

-- When the job's last telemetry packet arrived (the heartbeat).
ALTER TABLE jobs ADD COLUMN last_telemetry_at INTEGER;
-- Provider-fault retries used, and every attempt that ended on a node: [{node_id, reason, at_ms}].
ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN attempts TEXT NOT NULL DEFAULT '[]';

-- Customers whose container was caught mining or scanning.
ALTER TABLE users ADD COLUMN flagged_at INTEGER;
ALTER TABLE users ADD COLUMN flagged_reason TEXT;
