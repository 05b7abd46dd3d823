-- When a batch wrote its standings work (the last thing before its commit; on the
-- database's clock): the round that applies it measures how long the
-- oldest change it takes waited to reach the leaderboards
-- (`ttfd_sync_standings_lag_seconds`; docs/architecture.md, "Standings"), the figure
-- `sync.standings_visible_ms` promises.
ALTER TABLE standing_work ADD COLUMN at timestamptz NOT NULL DEFAULT clock_timestamp();

-- How long the last round's oldest change waited beyond the time between the beginnings
-- of the round before and that one (at least the round's length): the replicas space
-- rounds so that a change reaches the leaderboards within the promise even when a batch
-- wrote its work well before it committed (`store::standings::LastRound`).
ALTER TABLE standings_clock ADD COLUMN overhang interval NOT NULL DEFAULT '0';
