-- Job inputs, outputs and logs (stage 3). The bytes live in the blob store (object_store):
-- artifacts/<id>, outputs/<job id>.tar.gz, logs/<job id>/<seq, 10 digits>; rows here say what
-- exists, who owns it and its SHA-256.
CREATE TABLE artifacts (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL REFERENCES users(id),
    sha256      TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX artifacts_owner ON artifacts(owner_id);
-- The uploaded /output archive (NULL until the agent uploads one).
ALTER TABLE jobs ADD COLUMN output_sha256 TEXT;
ALTER TABLE jobs ADD COLUMN output_bytes INTEGER;
-- Log chunks stored so far, their total size, and whether the per-job cap cut the log (0/1).
ALTER TABLE jobs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_chunks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_truncated INTEGER NOT NULL DEFAULT 0;
