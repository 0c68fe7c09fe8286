-- Admin console (README "Admin console"); migration 4.
-- Versioned mapping (sync.managed_by = "console"): the newest version is in force.
CREATE TABLE IF NOT EXISTS mapping_versions (
    version  BIGINT PRIMARY KEY,
    settings TEXT NOT NULL,
    saved_by TEXT NOT NULL,
    saved_at BIGINT NOT NULL
);

-- Every change made through the console or `mapping set` / `learner link` / `dlq` actions.
CREATE TABLE IF NOT EXISTS audit_log (
    seq    BIGSERIAL PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT,
    after  TEXT
);

-- Worker processes report here every few seconds ("workers seen recently").
CREATE TABLE IF NOT EXISTS worker_heartbeats (
    worker_id TEXT PRIMARY KEY,
    host      TEXT NOT NULL,
    role      TEXT NOT NULL,
    mapping_version BIGINT,
    api_used  BIGINT,
    api_max   BIGINT,
    started_at BIGINT NOT NULL,
    seen_at   BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS event_outcomes_class_recorded ON event_outcomes (class, recorded_at);
