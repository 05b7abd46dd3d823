//! The process's Prometheus metrics: one registry per process, shared by every role that
//! runs in it, served as Prometheus text by the web role at `/metrics`.
//!
//! A role registers its own metric families once, at start-up, under its own sub-prefix:
//!
//! ```
//! use prometheus_client::metrics::counter::Counter;
//! let metrics = ttfd::metrics::Metrics::new();
//! let applied = Counter::<u64>::default();
//! metrics.register("sync", |r| r.register("events_applied", "Events applied", applied.clone()));
//! applied.inc();
//! assert!(metrics.render().contains("ttfd_sync_events_applied_total 1"));
//! ```
//!
//! Metric handles (`Counter`, `Family`, `Histogram`) are cheap clones sharing their
//! value, so a role keeps its handles and the registry only reads them when scraped.
//! Reads no configuration.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A cheaply cloneable handle on the process's registry (every name starts with `ttfd_`).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::with_prefix("ttfd"))),
        }
    }

    /// Lets `role` register its metric families under `ttfd_<role>_...`.
    pub fn register(&self, role: &str, f: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(registry.sub_registry_with_prefix(role));
    }

    /// Every registered metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    use super::*;

    #[test]
    fn roles_register_under_their_own_prefix_and_share_one_output() {
        let metrics = Metrics::new();
        let a = Counter::<u64>::default();
        let b = Family::<Vec<(String, String)>, Counter>::default();
        metrics.register("web", |r| {
            r.register("requests", "HTTP requests", a.clone())
        });
        metrics.register("sync", |r| {
            r.register("applied", "Events applied", b.clone())
        });
        a.inc_by(3);
        b.get_or_create(&vec![("platform".into(), "discord".into())])
            .inc();
        let text = metrics.clone().render();
        assert!(text.contains("ttfd_web_requests_total 3"), "{text}");
        assert!(
            text.contains("ttfd_sync_applied_total{platform=\"discord\"} 1"),
            "{text}"
        );
    }
}
