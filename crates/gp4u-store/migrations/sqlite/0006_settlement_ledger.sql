-- Stages 5–7: completion (energy, carbon, Veritas), proofs, double-entry billing, the Obsidian ledger.

-- Billing. A user's `credit_micros` is their available balance and `held_micros` what open jobs
-- hold; other accounts (platform:fees, platform:student_program, external) live in `accounts`.
-- Every change of any balance is a row of `transfers`, posted once (its id is the key).
ALTER TABLE users ADD COLUMN held_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN hold_micros INTEGER NOT NULL DEFAULT 0;
CREATE TABLE accounts (
    id              TEXT PRIMARY KEY,
    balance_micros  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE transfers (
    id              TEXT PRIMARY KEY,
    debit           TEXT NOT NULL,
    credit          TEXT NOT NULL,
    amount_micros   INTEGER NOT NULL CHECK (amount_micros > 0),
    kind            TEXT NOT NULL,
    job_id          TEXT,
    created_at      INTEGER NOT NULL
);
CREATE INDEX transfers_job ON transfers(job_id);
CREATE INDEX transfers_debit ON transfers(debit, created_at);
CREATE INDEX transfers_credit ON transfers(credit, created_at);
-- Credit and stakes from before the journal existed, journalled as opening balances so that
-- every balance column equals the sum of its transfers.
INSERT INTO transfers (id, debit, credit, amount_micros, kind, job_id, created_at)
    SELECT 'opening:' || id, 'external', 'user:' || id || ':available', credit_micros,
           'opening_balance', NULL, created_at FROM users WHERE credit_micros > 0;
INSERT INTO transfers (id, debit, credit, amount_micros, kind, job_id, created_at)
    SELECT 'opening:' || id, 'external', 'node:' || id || ':stake', stake_micros,
           'opening_balance', NULL, created_at FROM provider_nodes WHERE stake_micros > 0;
INSERT INTO accounts (id, balance_micros)
    SELECT 'external', -SUM(amount_micros) FROM transfers HAVING COUNT(*) > 0;
-- One settlement per job, as computed (its transfers are in `transfers`).
CREATE TABLE settlements (
    job_id          TEXT PRIMARY KEY,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);

-- Energy and carbon.
ALTER TABLE provider_nodes ADD COLUMN renewable_pct REAL NOT NULL DEFAULT 0;
ALTER TABLE telemetry ADD COLUMN commitment TEXT;
ALTER TABLE jobs ADD COLUMN energy_mwms TEXT;
ALTER TABLE jobs ADD COLUMN carbon_credit_eligible INTEGER;
CREATE TABLE grid_factors (
    region          TEXT PRIMARY KEY,
    g_co2e_per_kwh  REAL NOT NULL,
    source          TEXT NOT NULL,
    as_of           TEXT NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- Veritas: one reproducibility record per finished job.
CREATE TABLE veritas_records (
    job_id          TEXT PRIMARY KEY,
    node_id         TEXT,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);

-- Proofs (stage 6), as received and verified: one of each kind per job.
CREATE TABLE proofs (
    job_id          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    assurance       TEXT,
    body            TEXT NOT NULL,
    verified_at     INTEGER NOT NULL,
    PRIMARY KEY (job_id, kind)
);

-- Obsidian: the append-only log. `body` is the leaf's data, byte for byte; `source_position`
-- the outbox position it seals (each event is sealed once).
CREATE TABLE ledger_entries (
    log_index       INTEGER PRIMARY KEY,
    source_position INTEGER NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    job_id          TEXT,
    body            TEXT NOT NULL,
    leaf_hash       TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX ledger_entries_job ON ledger_entries(job_id, log_index);
-- Perfect subtree hashes (level 0 = leaves), enough to answer every proof.
CREATE TABLE ledger_nodes (
    level           INTEGER NOT NULL,
    node_index      INTEGER NOT NULL,
    hash            TEXT NOT NULL,
    PRIMARY KEY (level, node_index)
);
-- Signed checkpoints (C2SP tlog-checkpoint notes), one per tree size published.
CREATE TABLE ledger_checkpoints (
    tree_size       INTEGER PRIMARY KEY,
    root            TEXT NOT NULL,
    note            TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
