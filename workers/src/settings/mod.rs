//! Settings, loaded once at start-up: defaults, then an optional TOML file
//! (`--config`), then environment variables `TTFD__<SECTION>__<KEY>`, which win.
//!
//! One file per section: [`database`] (`database.*`), [`nats`] (`nats.*`), [`sync`]
//! (`sync.*`), [`log`] (`log.*`), [`metrics`] (`metrics.listen`), [`discord`]
//! (`discord.*`), [`telegram`] (`telegram.*`), [`trust`] (`trust.*`), [`web`] (`web.*`),
//! [`moderation`] (`moderation.*`), [`rates`] (`boosts`, `discord.xp_rates.*`,
//! `telegram.chat_rates`);
//! `rules.*` is [`ttfd_shared::Rules`]. See `config/ttfd.example.toml` for every key. Unknown keys
//! and bad values stop start-up with a [`SettingsError`] naming the key.
//!
//! This module imports no role: the roles read their section from here.

pub mod database;
pub mod discord;
pub mod log;
pub mod metrics;
pub mod moderation;
pub mod nats;
pub mod rates;
pub mod seasons;
pub mod sync;
pub mod telegram;
pub mod trust;
pub mod web;

use std::path::Path;

use serde::Deserialize;
use ttfd_shared::Rules;

pub use database::DatabaseSettings;
pub use discord::DiscordSettings;
pub use log::{LogFormat, LogSettings};
pub use metrics::MetricsSettings;
pub use moderation::ModerationSettings;
pub use nats::NatsSettings;
pub use sync::SyncSettings;
pub use telegram::{TelegramMode, TelegramSettings};
pub use trust::{TrustMode, TrustSettings};
pub use web::WebSettings;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub nats: NatsSettings,
    pub sync: SyncSettings,
    pub rules: Rules,
    pub log: LogSettings,
    pub discord: DiscordSettings,
    pub web: WebSettings,
    pub metrics: MetricsSettings,
    pub telegram: TelegramSettings,
    pub trust: TrustSettings,
    pub moderation: ModerationSettings,
    /// `[[boosts]]`: timed XP boosts (`settings::rates`).
    pub boosts: Vec<rates::BoostSettings>,
    /// `[[seasons]]`: named seasons (`settings::seasons`; docs/seasons.md).
    pub seasons: Vec<seasons::SeasonSettings>,
    /// `[champions]`: a season's closing.
    pub champions: seasons::ChampionSettings,
}

/// Settings that cannot be used, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key {key}: {message}")]
    Invalid { key: String, message: String },
}

impl From<crate::announce::TemplateError> for SettingsError {
    fn from(e: crate::announce::TemplateError) -> Self {
        invalid(&e.key, e.message)
    }
}

/// The error for a bad `key`; every section builds its errors with it.
pub fn invalid(key: &str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

impl Settings {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment passed in (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
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

    /// The checks serde cannot express, section by section.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.database.validate()?;
        self.nats.validate()?;
        self.sync.validate()?;
        self.web.validate()?;
        self.metrics.addr()?;
        self.telegram.validate()?;
        self.telegram.announce.templates(&self.rules)?;
        self.trust.validate()?;
        self.moderation.validate()?;
        rates::boosts(&self.boosts)?;
        seasons::seasons(&self.seasons)?;
        self.champions.validate()?;
        self.discord.xp_rates.rates()?;
        rates::id_rates::<i64>("telegram.chat_rates", &self.telegram.chat_rates)?;
        self.rules
            .validate()
            .map_err(|e| invalid(&format!("rules.{}", e.key), e.message))?;
        self.discord.validate(&self.rules)
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
    fn retired_trust_keys_come_from_the_environment_too() {
        let key = "retired-key-retired-key-retired-key";
        let s = Settings::load_from(
            None,
            env(&[("TTFD__TRUST__RETIRED_KEYS__RELAY__2026A", key)]),
        )
        .expect("loads");
        let retired = s.trust.retired_keys().expect("valid");
        let relay = &retired[&ttfd_shared::trust::Publisher::Relay];
        assert_eq!(relay.len(), 1);
        assert_eq!(relay[0].expose_secret(), key);
        let err = Settings::load_from(
            None,
            env(&[("TTFD__TRUST__RETIRED_KEYS__RELAY__OLD", "short")]),
        )
        .expect_err("refused")
        .to_string();
        assert!(err.contains("trust.retired_keys.relay.old"), "{err}");
    }

    #[test]
    fn boosts_are_read_from_a_file_and_bad_ones_name_their_entry() {
        let dir = std::env::temp_dir().join(format!("ttfd-boosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("ttfd.toml");
        let write = |from: &str, to: &str, mult: u32| {
            let toml = format!(
                "[[boosts]]\nname = \"weekend\"\nfrom = \"{from}\"\nto = \"{to}\"\nmult = {mult}\n"
            );
            std::fs::write(&path, toml).expect("write");
            Settings::load_from(Some(&path), env(&[]))
        };
        let s = write("2026-12-05T00:00:00Z", "2026-12-07T00:00:00Z", 200).expect("loads");
        let boosts = rates::boosts(&s.boosts).expect("valid");
        assert_eq!(boosts[0].to_ms - boosts[0].from_ms, 2 * 86_400_000);
        assert_eq!(boosts[0].mult, 200);
        for (from, to, mult, named) in [
            ("saturday", "2026-12-07T00:00:00Z", 200, "boosts[0].from"),
            (
                "2026-12-07T00:00:00Z",
                "2026-12-05T00:00:00Z",
                200,
                "boosts[0].to",
            ),
            (
                "2026-12-05T00:00:00Z",
                "2026-12-07T00:00:00Z",
                5000,
                "boosts[0].mult",
            ),
        ] {
            let err = write(from, to, mult).expect_err("refused").to_string();
            assert!(err.contains(named), "{err}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("TTFD__NATS__PREFIX", "bad.prefix", "nats.prefix"),
            ("TTFD__DATABASE__URL", "mysql://x", "database.url"),
            ("TTFD__SYNC__BATCH_SIZE", "0", "sync.batch_size"),
            ("TTFD__SYNC__BATCH_SIZE", "many", "batch_size"),
            (
                "TTFD__SYNC__STANDINGS_REFRESH_MS",
                "3000",
                "sync.standings_refresh_ms",
            ),
            (
                "TTFD__SYNC__STANDINGS_VISIBLE_MS",
                "100",
                "sync.standings_visible_ms",
            ),
            ("TTFD__NATS__NOPE", "1", "nope"),
            ("TTFD__METRICS__LISTEN", "port 9090", "metrics.listen"),
            ("TTFD__TRUST__MODE", "signed", "trust.mode"),
            ("TTFD__TRUST__MODE", "strict", "mode"),
            ("TTFD__TRUST__KEYS__RELAY", "short", "trust.keys.relay"),
            (
                "TTFD__TRUST__KEYS__ROOT",
                "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
                "trust.keys.root",
            ),
            (
                "TTFD__TRUST__KEYS__PLATFORM",
                "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
                "trust.keys.platform",
            ),
            (
                "TTFD__DISCORD__XP_RATES__CHANNELS__1100",
                "1001",
                "discord.xp_rates.channels.1100",
            ),
            (
                "TTFD__DISCORD__XP_RATES__ROLES__MODS",
                "200",
                "discord.xp_rates.roles.mods",
            ),
            (
                "TTFD__TELEGRAM__CHAT_RATES__GROUP",
                "50",
                "telegram.chat_rates.group",
            ),
            ("TTFD__MODERATION__MAX_AMOUNT", "0", "moderation.max_amount"),
            (
                "TTFD__MODERATION__ACTIONS_PER_HOUR",
                "0",
                "moderation.actions_per_hour",
            ),
        ];
        for (key, value, named) in cases {
            let err = Settings::load_from(None, env(&[(key, value)]))
                .expect_err("must be refused")
                .to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }
}
