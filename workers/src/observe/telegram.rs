//! The Telegram role's metrics (`ttfd_telegram_*`).
//!
//! | metric | type | what |
//! |---|---|---|
//! | `ttfd_telegram_events_published_total{kind}` | counter | events JetStream stored (`message`) |
//! | `ttfd_telegram_publish_retries_total` | counter | failed publish attempts, retried |
//! | `ttfd_telegram_notices_total{outcome}` | counter | rank notices handled: `done`, `retry` (put back with a delay), `unreadable` |
//!
//! Reads no configuration.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::discord::{KindLabels, NoticeLabels};
use crate::metrics::Metrics;

/// The Telegram role's metric handles; `Default` gives unregistered ones.
#[derive(Clone, Default)]
pub struct TelegramMetrics {
    pub published: Family<KindLabels, Counter>,
    pub publish_retries: Counter,
    pub notices: Family<NoticeLabels, Counter>,
}

impl TelegramMetrics {
    /// Registers the families as `ttfd_telegram_*`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register("telegram", |r| {
            r.register(
                "events_published",
                "Events stored by JetStream, by kind",
                m.published.clone(),
            );
            r.register(
                "publish_retries",
                "Failed event publications, retried",
                m.publish_retries.clone(),
            );
            r.register(
                "notices",
                "Rank notices handled, by outcome",
                m.notices.clone(),
            );
        });
        m
    }

    pub fn published(&self, kind: &'static str) {
        self.published.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn notice(&self, outcome: &'static str) {
        self.notices.get_or_create(&NoticeLabels { outcome }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telegram_metrics_render_under_their_prefix() {
        let metrics = Metrics::new();
        let m = TelegramMetrics::register(&metrics);
        m.published("message");
        m.notice("done");
        m.publish_retries.inc();
        let text = metrics.render();
        for line in [
            "ttfd_telegram_events_published_total{kind=\"message\"} 1",
            "ttfd_telegram_notices_total{outcome=\"done\"} 1",
            "ttfd_telegram_publish_retries_total 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
