//! The Discord role's metrics: a bot's (`observe::bot`, as `ttfd_discord_*`), and
//! `ttfd_discord_role_changes_total{change}`, rank roles `added` / `removed` on members.
//!
//! Reads no configuration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::bot::BotMetrics;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// `added` or `removed`.
    pub change: &'static str,
}

/// The Discord role's metric handles; `Default` gives unregistered ones.
#[derive(Clone, Default)]
pub struct DiscordMetrics {
    pub bot: BotMetrics,
    pub role_changes: Family<ChangeLabels, Counter>,
}

impl DiscordMetrics {
    /// Registers the families as `ttfd_discord_*`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self {
            bot: BotMetrics::register(metrics, "discord"),
            ..Self::default()
        };
        metrics.register("discord", |r| {
            r.register(
                "role_changes",
                "Rank roles added to or removed from members",
                m.role_changes.clone(),
            );
        });
        m
    }

    pub fn role_changed(&self, change: &'static str, n: u64) {
        if n > 0 {
            self.role_changes
                .get_or_create(&ChangeLabels { change })
                .inc_by(n);
        }
    }
}
