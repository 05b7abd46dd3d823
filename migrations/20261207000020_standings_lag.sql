-- When a batch wrote its standings work (late in its transaction, shortly before it
-- commits; on the database's clock): the round that applies it measures how long the
-- oldest change it takes waited to reach the leaderboards
-- (`ttfd_sync_standings_lag_seconds`; docs/architecture.md, "Standings"), the figure
-- `sync.standings_visible_ms` promises.
ALTER TABLE standing_work ADD COLUMN at timestamptz NOT NULL DEFAULT clock_timestamp();
