-- History retention (store.history_retention_days) deletes by receipt time.
CREATE INDEX IF NOT EXISTS event_outcomes_recorded ON event_outcomes (recorded_at);
