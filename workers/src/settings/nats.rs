//! `[nats]`: `nats.url`, `nats.prefix` (SPEC 6), `nats.user` and `nats.password`
//! (`nats/accounts.conf`), `nats.stream_replicas`.

use secrecy::SecretString;
use serde::Deserialize;

use super::{SettingsError, invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    pub url: String,
    /// First subject token and stream name prefix (SPEC 6).
    pub prefix: String,
    /// NATS user and password when the server requires them (`nats/accounts.conf`);
    /// the password never reaches logs.
    pub user: Option<String>,
    pub password: Option<SecretString>,
    /// Copies of each stream `ttfd nats setup` asks for: 1 on a single server, 3 on a
    /// production cluster.
    pub stream_replicas: usize,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "ttfd".into(),
            user: None,
            password: None,
            stream_replicas: 1,
        }
    }
}

impl NatsSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if ttfd_shared::Platform::parse(&self.prefix).is_err() {
            return Err(invalid(
                "nats.prefix",
                "must be one subject token matching ^[a-z][a-z0-9_-]{0,31}$",
            ));
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(invalid("nats.stream_replicas", "must be 1 to 5"));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid(
                "nats.password",
                "nats.user and nats.password go together",
            ));
        }
        if let Some(user) = &self.user
            && !user_is_a_subject_token(user)
        {
            return Err(invalid(
                "nats.user",
                "must be 1..=64 of A-Z a-z 0-9 _ - (it names the connection's reply inbox)",
            ));
        }
        if self.url.trim().is_empty() {
            return Err(invalid("nats.url", "must not be empty"));
        }
        Ok(())
    }

    /// The prefix of this connection's reply subjects: `_INBOX.<user>` for a user, so
    /// that NATS permissions can let each user read only its own replies
    /// (`nats/accounts.conf`); the default `_INBOX` without one.
    pub fn inbox_prefix(&self) -> String {
        match &self.user {
            Some(user) => format!("_INBOX.{user}"),
            None => "_INBOX".into(),
        }
    }
}

fn user_is_a_subject_token(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
