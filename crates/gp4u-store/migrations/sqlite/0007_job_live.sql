-- A running job's heartbeat and latest metrics, apart from the wide `jobs` row: every
-- telemetry batch rewrites these, and a narrow row with one index is cheap to rewrite.
-- Readers take them from here first (jobs.latest_metrics and jobs.last_telemetry_at keep what
-- was written before this table existed).
CREATE TABLE job_live (
    job_id              TEXT PRIMARY KEY,
    node_id             TEXT NOT NULL,
    last_telemetry_at   INTEGER NOT NULL,
    latest_metrics      TEXT NOT NULL
);
CREATE INDEX job_live_node ON job_live(node_id, last_telemetry_at);
