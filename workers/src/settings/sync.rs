//! `[sync]`: the sync consumer's batching, retries, shutdown grace, relay and pruning.

use serde::Deserialize;

use super::{SettingsError, invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// How long a batch waits for more events before it is applied, in ms: a little
    /// latency for fewer, larger transactions under load.
    pub batch_linger_ms: u64,
    /// Longest wait between retries of a failing batch, in seconds.
    pub max_retry_delay_secs: u64,
    /// Time a stopping role gives its work in flight, in seconds (every role but
    /// `ttfd telegram`, which has `telegram.shutdown_grace_secs`).
    pub shutdown_grace_secs: u64,
    /// How often the outbox relay looks for rows left by other replicas, in ms.
    pub relay_poll_ms: u64,
    /// How often applied event ids past the stream's retention are pruned, in seconds.
    pub prune_interval_secs: u64,
    /// The standings refreshers of all replicas together begin at most one round with
    /// work per this many ms (under load further apart, within
    /// `standings_visible_ms`: `store::standings::Pacing`): a committed change is on the
    /// leaderboards within this plus one round (docs/architecture.md, "Standings").
    pub standings_refresh_ms: u64,
    /// The promise: a committed change is on every leaderboard within this many ms.
    /// Under load the refresher spaces its rounds as far as it allows; a larger value
    /// trades freshness for the write path's throughput (2,000 by default).
    pub standings_visible_ms: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            batch_linger_ms: 2,
            max_retry_delay_secs: 10,
            shutdown_grace_secs: 20,
            relay_poll_ms: 1000,
            prune_interval_secs: 3600,
            standings_refresh_ms: 1000,
            standings_visible_ms: 2000,
        }
    }
}

impl SyncSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(invalid("sync.batch_size", "must be 1..=10000"));
        }
        if !(500..=60_000).contains(&self.standings_visible_ms) {
            return Err(invalid("sync.standings_visible_ms", "must be 500..=60000"));
        }
        if !(10..=self.standings_visible_ms).contains(&self.standings_refresh_ms) {
            return Err(invalid(
                "sync.standings_refresh_ms",
                format!(
                    "must be 10..={} (changes must reach the leaderboards within \
                     sync.standings_visible_ms)",
                    self.standings_visible_ms
                ),
            ));
        }
        if self.max_retry_delay_secs == 0 || self.relay_poll_ms == 0 {
            return Err(invalid("sync", "delays must be positive"));
        }
        Ok(())
    }
}
