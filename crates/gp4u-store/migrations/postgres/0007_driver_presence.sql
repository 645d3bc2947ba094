-- Stage 5 gaps: the GPU driver for Veritas records, and node presence for Mnemo's uptime.

-- The driver the GPU runs under, as the agent's NVML reads it at registration (NULL when the
-- agent did not say: registered before this version, or a provider's own client).
ALTER TABLE gpus ADD COLUMN driver_version TEXT;

-- Presence: each agent contact (an assignment poll, at its start and its end) moves
-- `last_seen_at`; the time since the previous contact is added to `online_ms` when it is at
-- most the presence gap (a long poll's longest wait and some slack). Uptime is `online_ms`
-- over the time since the first contact (`first_seen_at`), so that nodes registered before
-- this column existed are not counted as down for the time before it.
ALTER TABLE provider_nodes ADD COLUMN first_seen_at BIGINT;
ALTER TABLE provider_nodes ADD COLUMN last_seen_at BIGINT;
ALTER TABLE provider_nodes ADD COLUMN online_ms BIGINT NOT NULL DEFAULT 0;
