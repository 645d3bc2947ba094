-- GP4U schema v1 (PostgreSQL). Times are unix milliseconds (BIGINT); money is integer
-- micro-units (BIGINT); booleans are 0/1 BIGINT so that both engines decode them alike.
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

CREATE TABLE provider_nodes (
    id              TEXT PRIMARY KEY,
    owner_id        TEXT NOT NULL REFERENCES users(id),
    region          TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    status          TEXT NOT NULL,
    -- 0..100; new providers start neutral at 50 (see ARCHITECTURE.md, "Trust").
    trust_score     DOUBLE PRECISION NOT NULL DEFAULT 50,
    created_at      BIGINT NOT NULL
);
CREATE INDEX provider_nodes_owner ON provider_nodes(owner_id);

CREATE TABLE gpus (
    id              TEXT PRIMARY KEY,
    node_id         TEXT NOT NULL REFERENCES provider_nodes(id),
    name            TEXT NOT NULL,
    vram_gb         DOUBLE PRECISION NOT NULL,
    price_micros    BIGINT NOT NULL,
    uuid            TEXT,
    status          TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX gpus_node ON gpus(node_id);
CREATE INDEX gpus_status ON gpus(status);

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

CREATE TABLE idempotency_keys (
    user_id         TEXT NOT NULL,
    idem_key        TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    status_code     BIGINT NOT NULL,
    response        TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);

-- Sliding-log rate limits: one row per key, the attempts inside the window as a sorted array,
-- so that a check-and-record is one upsert (its row lock serialises a key across replicas).
CREATE TABLE rate_limits (
    key             TEXT PRIMARY KEY,
    hits            BIGINT[] NOT NULL
);

-- The transactional outbox. `id` is insertion order, which concurrent transactions may commit
-- out of; `position` is assigned by the single relay (under an advisory lock) in visibility
-- order, so consumers reading `position > cursor` never skip an event.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    topic           TEXT NOT NULL,
    aggregate_id    TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    position        BIGINT UNIQUE
);
CREATE INDEX outbox_unpositioned ON outbox(id) WHERE position IS NULL;

CREATE TABLE subscribers (
    name            TEXT PRIMARY KEY,
    position        BIGINT NOT NULL,
    model           TEXT NOT NULL,
    updated_at      BIGINT NOT NULL
);
