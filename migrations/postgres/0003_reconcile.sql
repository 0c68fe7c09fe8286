-- Reconcile (docs/rules.md "Salesforce"): learners whose last Salesforce write ended in a
-- timeout or another ambiguous outcome, re-verified within reconcile.uncertain_after_secs.
CREATE TABLE IF NOT EXISTS uncertain_writes (
    learner_id TEXT PRIMARY KEY,
    marked_at  BIGINT NOT NULL,
    reason     TEXT NOT NULL
);

-- Reconcile finds the learner of a Contact whose link field was cleared in Salesforce.
CREATE INDEX IF NOT EXISTS learners_contact ON learners (contact_id);
