-- Every telemetry batch moves jobs.last_telemetry_at and jobs.latest_metrics. An index on
-- last_telemetry_at made each of those updates touch every index of `jobs`; the reapers find
-- RUNNING jobs through jobs_status, so the index goes.
DROP INDEX jobs_status_telemetry;
