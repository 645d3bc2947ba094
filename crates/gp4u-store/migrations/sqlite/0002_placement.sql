-- Placement and dispatch (stages 2–3).
ALTER TABLE jobs ADD COLUMN assigned_at INTEGER;
ALTER TABLE jobs ADD COLUMN picked_up_at INTEGER;
-- Nodes this job must not be placed on again (it timed out or failed there).
ALTER TABLE jobs ADD COLUMN excluded_nodes TEXT NOT NULL DEFAULT '[]';
-- The job holding the GPU; set together with status BUSY, in the assignment transaction.
ALTER TABLE gpus ADD COLUMN current_job_id TEXT;
CREATE UNIQUE INDEX gpus_current_job ON gpus(current_job_id) WHERE current_job_id IS NOT NULL;
CREATE INDEX jobs_node_status ON jobs(node_id, status);
