//! `[metrics]`: `metrics.listen`, where the roles without a web server serve
//! `/metrics`, `/healthz` and `/readyz` (empty: no listener).

use std::net::SocketAddr;

use serde::Deserialize;

use super::{SettingsError, invalid};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// `host:port` of the `/metrics`, `/healthz`, `/readyz` listener, e.g.
    /// `0.0.0.0:9090` in a container; empty (the default): no listener, so that several
    /// roles on one machine do not fight over a port.
    pub listen: String,
}

impl MetricsSettings {
    /// The address to listen on; `None` when the listener is off.
    pub fn addr(&self) -> Result<Option<SocketAddr>, SettingsError> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            invalid(
                "metrics.listen",
                format!("{listen:?} is not a host:port address such as 0.0.0.0:9090 (empty: off)"),
            )
        })
    }
}
