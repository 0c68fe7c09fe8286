-- syncback state store (PostgreSQL). Timestamps are unix microseconds (BIGINT) so the
-- same queries run on PostgreSQL and SQLite through sqlx's Any driver.

-- R8/R9/R10: one row per learner ever seen.
CREATE TABLE IF NOT EXISTS learners (
    learner_id   TEXT PRIMARY KEY,
    contact_id   TEXT,
    link         TEXT NOT NULL,
    account_id   TEXT,
    last_outcome TEXT,
    last_error   TEXT,
    updated_at   BIGINT NOT NULL
);

-- R12: last applied event per entity (learner, enrollment, certification).
CREATE TABLE IF NOT EXISTS entity_versions (
    kind        TEXT NOT NULL,
    entity_id   TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    event_id    TEXT NOT NULL,
    PRIMARY KEY (kind, entity_id)
);

-- R12: processed event ids (duplicates), pruned after a retention period.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     TEXT PRIMARY KEY,
    processed_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS processed_events_at ON processed_events (processed_at);

-- Outcome history for `syncback learner status`.
CREATE TABLE IF NOT EXISTS event_outcomes (
    seq         BIGSERIAL PRIMARY KEY,
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    learner_id  TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    class       TEXT NOT NULL,
    code        TEXT NOT NULL,
    detail      TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS event_outcomes_learner ON event_outcomes (learner_id, seq);

-- Per-learner leases: no two workers apply the same learner at once.
CREATE TABLE IF NOT EXISTS leases (
    key        TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Resumable jobs (backfill).
CREATE TABLE IF NOT EXISTS checkpoints (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
