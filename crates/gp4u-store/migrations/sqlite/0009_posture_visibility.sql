-- Issue 11: the host posture each agent reports, and visibility challenges that ride on the
-- agent's own channel (its telemetry replies) instead of a URL the provider registers.

-- The posture (gp4u-core::posture::HostPosture, JSON) the node's agent last reported: at
-- registration and at every start. NULL for nodes whose agent never did (older agents).
ALTER TABLE provider_nodes ADD COLUMN posture TEXT;

-- One challenge per row: issued for a running job of the node, delivered in a telemetry
-- reply of that job, answered on POST /api/agent/visibility with signed evidence. `result`
-- is NULL while the challenge is open, then ANSWERED, BAD_ANSWER, UNANSWERED (its deadline
-- passed while the node's telemetry kept arriving: the agent is alive and did not answer) or
-- TIMEOUT (the deadline passed and the node was silent too: the heartbeat's to judge).
CREATE TABLE visibility_challenges (
    nonce TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES provider_nodes(id),
    job_id TEXT NOT NULL REFERENCES jobs(id),
    issued_at INTEGER NOT NULL,
    deadline INTEGER NOT NULL,
    answered_at INTEGER,
    result TEXT,
    detail TEXT,
    evidence TEXT
);
CREATE INDEX visibility_challenges_open ON visibility_challenges (node_id) WHERE result IS NULL;
CREATE INDEX visibility_challenges_job ON visibility_challenges (job_id, issued_at);
