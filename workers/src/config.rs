//! Settings, loaded once at start-up: defaults, then an optional TOML file
//! (`--config`), then environment variables `TTFD__<SECTION>__<KEY>`, which win.
//!
//! Keys: `database.url`, `database.max_connections`, `nats.url`, `nats.prefix`,
//! `sync.*`, `rules.*`, `log.*`, `discord.*` (`discord/settings.rs`), `web.*`
//! (`web/settings.rs`), `telegram.*` (`telegram/settings.rs`) and `metrics.listen`
//! (`observe/mod.rs`); see `config/ttfd.example.toml` for all of them.
//! Unknown keys and bad values stop start-up with a message naming the key.

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use ttfd_shared::Rules;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub nats: NatsSettings,
    pub sync: SyncSettings,
    pub rules: Rules,
    pub log: LogSettings,
    pub discord: crate::discord::DiscordSettings,
    pub web: crate::web::WebSettings,
    pub metrics: crate::observe::MetricsSettings,
    pub telegram: crate::telegram::TelegramSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; may hold a password, so it never reaches logs.
    pub url: SecretString,
    pub max_connections: u32,
}

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
    /// Time a stopping consumer gives its in-flight batch, in seconds.
    pub shutdown_grace_secs: u64,
    /// How often the outbox relay looks for rows left by other replicas, in ms.
    pub relay_poll_ms: u64,
    /// How often applied event ids past the stream's retention are pruned, in seconds.
    pub prune_interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` for people, `json` for machines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `ttfd=debug,sqlx=warn`; `RUST_LOG` wins.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/ttfd"),
            max_connections: 8,
        }
    }
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

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            batch_linger_ms: 2,
            max_retry_delay_secs: 10,
            shutdown_grace_secs: 20,
            relay_poll_ms: 1000,
            prune_interval_secs: 3600,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info,async_nats=warn".into(),
        }
    }
}

/// Settings that cannot be used, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

impl Settings {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment passed in (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("TTFD__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("TTFD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The checks serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        let db = self.database.url.expose_secret();
        if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            return Err(invalid("database.url", "must be a postgres:// URL"));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if ttfd_shared::Platform::parse(&self.nats.prefix).is_err() {
            return Err(invalid(
                "nats.prefix",
                "must be one subject token matching ^[a-z][a-z0-9_-]{0,31}$",
            ));
        }
        if !(1..=5).contains(&self.nats.stream_replicas) {
            return Err(invalid("nats.stream_replicas", "must be 1 to 5"));
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return Err(invalid(
                "nats.password",
                "nats.user and nats.password go together",
            ));
        }
        if self.nats.url.trim().is_empty() {
            return Err(invalid("nats.url", "must not be empty"));
        }
        if !(1..=10_000).contains(&self.sync.batch_size) {
            return Err(invalid("sync.batch_size", "must be 1..=10000"));
        }
        if self.sync.max_retry_delay_secs == 0 || self.sync.relay_poll_ms == 0 {
            return Err(invalid("sync", "delays must be positive"));
        }
        self.web.validate()?;
        self.metrics.addr()?;
        self.telegram.validate()?;
        self.rules
            .validate()
            .map_err(|e| invalid(&format!("rules.{}", e.key), e.message))?;
        self.discord
            .validate(&self.rules)
            .map_err(|(key, message)| invalid(&key, message))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.sync.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let s = Settings::load_from(None, env(&[])).expect("defaults load");
        assert_eq!(s.nats.prefix, "ttfd");
        assert_eq!(s.rules, Rules::default());
        assert!(s.database.url.expose_secret().contains("127.0.0.1"));
    }

    #[test]
    fn environment_overrides_win() {
        let s = Settings::load_from(
            None,
            env(&[
                ("TTFD__DATABASE__URL", "postgres://x@db/ttfd"),
                ("TTFD__NATS__PREFIX", "tenant2"),
                ("TTFD__RULES__MESSAGE_XP", "15"),
                ("TTFD__SYNC__BATCH_SIZE", "50"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.database.url.expose_secret(), "postgres://x@db/ttfd");
        assert_eq!(s.nats.prefix, "tenant2");
        assert_eq!(s.rules.message_xp, 15);
        assert_eq!(s.sync.batch_size, 50);
    }

    #[test]
    fn a_file_is_read_and_the_environment_still_wins() {
        let dir = std::env::temp_dir().join(format!("ttfd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("ttfd.toml");
        std::fs::write(
            &path,
            "[nats]\nprefix = \"fromfile\"\n[sync]\nbatch_size = 7\n",
        )
        .expect("write");
        let s = Settings::load_from(Some(&path), env(&[("TTFD__SYNC__BATCH_SIZE", "9")]))
            .expect("loads");
        assert_eq!((s.nats.prefix.as_str(), s.sync.batch_size), ("fromfile", 9));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("TTFD__NATS__PREFIX", "bad.prefix", "nats.prefix"),
            ("TTFD__DATABASE__URL", "mysql://x", "database.url"),
            ("TTFD__SYNC__BATCH_SIZE", "0", "sync.batch_size"),
            ("TTFD__SYNC__BATCH_SIZE", "many", "batch_size"),
            ("TTFD__NATS__NOPE", "1", "nope"),
            ("TTFD__METRICS__LISTEN", "port 9090", "metrics.listen"),
        ];
        for (key, value, named) in cases {
            let err = Settings::load_from(None, env(&[(key, value)]))
                .expect_err("must be refused")
                .to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }
}
