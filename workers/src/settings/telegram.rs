//! The `[telegram]` section of the settings (`TTFD__TELEGRAM__<KEY>` in the
//! environment). Every key is optional for the other roles; `ttfd telegram` needs
//! `telegram.token`, and webhook mode needs `webhook_url` and `webhook_secret`.

use std::net::SocketAddr;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use std::collections::BTreeSet;

use super::SettingsError;

/// Shortest webhook secret accepted.
pub const MIN_WEBHOOK_SECRET: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramSettings {
    /// The bot token from @BotFather (`123456789:AA...`); never logged.
    pub token: Option<SecretString>,
    /// The community group (`-100...` for a supergroup) where rank-ups of members
    /// who have not started the bot are announced; none: those are not announced.
    pub group_chat_id: Option<i64>,
    /// More groups whose members' messages count, besides `group_chat_id`. The bot
    /// counts nothing in a group that is in neither (it may have been added anywhere);
    /// it still answers commands there.
    pub chats: Vec<i64>,
    /// XP rates by counted chat id, in percent (`settings::rates`): 0 counts the
    /// messages but pays no XP.
    pub chat_rates: std::collections::BTreeMap<String, u16>,
    /// The Bot API server: Telegram's, a self-hosted one, or a fake in tests.
    pub api_url: String,
    /// `polling` (one replica) or `webhook` (as many replicas as you like).
    pub mode: TelegramMode,
    /// Long-polling wait per `getUpdates`, in seconds (below the HTTP client's 17 s).
    pub poll_timeout_secs: u32,
    /// Webhook mode: the public HTTPS URL Telegram posts updates to; its path is the
    /// path served.
    pub webhook_url: Option<String>,
    /// Webhook mode: the address the HTTP server binds (behind your HTTPS proxy).
    pub listen: String,
    /// Webhook mode: the `secret_token` Telegram sends back in
    /// `X-Telegram-Bot-Api-Secret-Token`, so that only Telegram can post updates.
    pub webhook_secret: Option<SecretString>,
    /// How long a command waits for the query service, in ms.
    pub query_timeout_ms: u64,
    /// Time given to work in flight after SIGTERM, in seconds.
    pub shutdown_grace_secs: u64,
    /// Where and how rank-ups are announced (`crate::announce`).
    pub announce: TelegramAnnounce,
}

/// `telegram.announce`: `to` = `auto` (privately to members who started the bot, else in
/// `group_chat_id`), `private`, `group` or `off`; `template` and `ranks` for private
/// messages (plain text), `group_template` and `group_ranks` for the group (Telegram
/// HTML).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramAnnounce {
    pub to: TelegramAnnounceTo,
    pub template: String,
    pub ranks: std::collections::BTreeMap<String, String>,
    pub group_template: String,
    pub group_ranks: std::collections::BTreeMap<String, String>,
}

impl Default for TelegramAnnounce {
    fn default() -> Self {
        Self {
            to: TelegramAnnounceTo::Auto,
            template:
                "🎉 You reached rank {rank} with {xp} XP!\nNext: {next_rank} at {next_xp} XP."
                    .into(),
            ranks: std::collections::BTreeMap::new(),
            group_template: "🎉 {member} reached rank <b>{rank}</b>!".into(),
            group_ranks: std::collections::BTreeMap::new(),
        }
    }
}

impl TelegramAnnounce {
    /// The private and the group templates, checked against `rules`.
    pub fn templates(
        &self,
        rules: &ttfd_shared::Rules,
    ) -> Result<(crate::announce::Templates, crate::announce::Templates), SettingsError> {
        use crate::announce::Templates;
        Ok((
            Templates::new(
                ("telegram.announce.template", &self.template),
                ("telegram.announce.ranks", &self.ranks),
                rules,
            )?,
            Templates::new(
                ("telegram.announce.group_template", &self.group_template),
                ("telegram.announce.group_ranks", &self.group_ranks),
                rules,
            )?,
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelegramAnnounceTo {
    Auto,
    Private,
    Group,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelegramMode {
    Polling,
    Webhook,
}

impl TelegramSettings {
    /// The groups whose activity counts: `group_chat_id` and `chats`.
    pub fn counted_chats(&self) -> BTreeSet<i64> {
        self.group_chat_id
            .into_iter()
            .chain(self.chats.iter().copied())
            .collect()
    }
}

impl Default for TelegramSettings {
    fn default() -> Self {
        Self {
            token: None,
            group_chat_id: None,
            chats: Vec::new(),
            chat_rates: std::collections::BTreeMap::new(),
            api_url: "https://api.telegram.org".into(),
            mode: TelegramMode::Polling,
            poll_timeout_secs: 10,
            webhook_url: None,
            listen: "0.0.0.0:8080".into(),
            webhook_secret: None,
            query_timeout_ms: 5000,
            shutdown_grace_secs: 10,
            announce: TelegramAnnounce::default(),
        }
    }
}

fn invalid(key: &str, message: &str) -> SettingsError {
    super::invalid(&format!("telegram.{key}"), message)
}

impl TelegramSettings {
    /// The checks serde cannot express; a missing token is only an error for the
    /// `ttfd telegram` role ([`TelegramSettings::token`]).
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(token) = &self.token
            && !token_is_well_formed(token.expose_secret())
        {
            return Err(invalid(
                "token",
                "must look like 123456789:AAE... (the token @BotFather gave you)",
            ));
        }
        let api = url::Url::parse(&self.api_url)
            .map_err(|e| invalid("api_url", &format!("not a URL: {e}")))?;
        if !matches!(api.scheme(), "http" | "https") || api.cannot_be_a_base() {
            return Err(invalid("api_url", "must be an http(s) URL"));
        }
        if !(1..=15).contains(&self.poll_timeout_secs) {
            return Err(invalid("poll_timeout_secs", "must be 1..=15"));
        }
        if self.query_timeout_ms == 0 {
            return Err(invalid("query_timeout_ms", "must be positive"));
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid("listen", "must be an address such as 0.0.0.0:8080"));
        }
        if let Some(url) = &self.webhook_url {
            let parsed = url::Url::parse(url)
                .map_err(|e| invalid("webhook_url", &format!("not a URL: {e}")))?;
            if parsed.scheme() != "https" {
                return Err(invalid(
                    "webhook_url",
                    "Telegram only posts to https:// URLs",
                ));
            }
        }
        if let Some(secret) = &self.webhook_secret {
            let s = secret.expose_secret();
            // Telegram takes 1..=256; a secret a guesser could find needs no guessing.
            let ok = (MIN_WEBHOOK_SECRET..=256).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(invalid(
                    "webhook_secret",
                    &format!(
                        "must be {MIN_WEBHOOK_SECRET}..=256 characters of A-Z, a-z, 0-9, _ and - \
                         (openssl rand -hex 32)"
                    ),
                ));
            }
        }
        if self.mode == TelegramMode::Webhook {
            if self.webhook_url.is_none() {
                return Err(invalid(
                    "webhook_url",
                    "is required when telegram.mode = \"webhook\"",
                ));
            }
            if self.webhook_secret.is_none() {
                return Err(invalid(
                    "webhook_secret",
                    "is required when telegram.mode = \"webhook\"",
                ));
            }
        }
        Ok(())
    }

    /// The token, or the start-up error of `ttfd telegram` naming the key.
    pub fn require_token(&self) -> Result<&SecretString, SettingsError> {
        self.token.as_ref().ok_or_else(|| {
            invalid(
                "token",
                "is not set: `ttfd telegram` needs the bot token from @BotFather \
                 (TTFD__TELEGRAM__TOKEN or [telegram] token in the config file)",
            )
        })
    }

    /// The path the webhook server answers on: the path of `webhook_url`.
    pub fn webhook_path(&self) -> String {
        self.webhook_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.path().to_owned())
            .unwrap_or_else(|| "/".into())
    }
}

/// `<bot id>:<secret>` as @BotFather hands it out.
fn token_is_well_formed(token: &str) -> bool {
    let Some((id, secret)) = token.split_once(':') else {
        return false;
    };
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && !secret.is_empty()
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::load_from(None, pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())))
    }

    #[test]
    fn the_section_is_optional_and_polls_by_default() {
        let s = load(&[]).expect("defaults load");
        assert_eq!(s.telegram.mode, TelegramMode::Polling);
        assert!(s.telegram.token.is_none());
        let err = s
            .telegram
            .require_token()
            .expect_err("no token")
            .to_string();
        assert!(err.contains("telegram.token"), "{err}");
    }

    #[test]
    fn environment_sets_the_token_and_group() {
        let s = load(&[
            ("TTFD__TELEGRAM__TOKEN", "123456:AAE-x_y"),
            ("TTFD__TELEGRAM__GROUP_CHAT_ID", "-1001234567890"),
        ])
        .expect("loads");
        assert_eq!(
            s.telegram.require_token().expect("set").expose_secret(),
            "123456:AAE-x_y"
        );
        assert_eq!(s.telegram.group_chat_id, Some(-1_001_234_567_890));
    }

    #[test]
    fn the_token_never_reaches_debug_output() {
        let s = load(&[("TTFD__TELEGRAM__TOKEN", "123456:SECRETSECRET")]).expect("loads");
        assert!(!format!("{s:?}").contains("SECRETSECRET"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("TTFD__TELEGRAM__TOKEN", "not a token")],
                "telegram.token",
            ),
            (
                &[("TTFD__TELEGRAM__API_URL", "ftp://x")],
                "telegram.api_url",
            ),
            (&[("TTFD__TELEGRAM__LISTEN", "nowhere")], "telegram.listen"),
            (
                &[("TTFD__TELEGRAM__POLL_TIMEOUT_SECS", "60")],
                "telegram.poll_timeout_secs",
            ),
            (
                &[("TTFD__TELEGRAM__MODE", "webhook")],
                "telegram.webhook_url",
            ),
            (
                &[
                    ("TTFD__TELEGRAM__MODE", "webhook"),
                    ("TTFD__TELEGRAM__WEBHOOK_URL", "https://bot.example.org/tg"),
                ],
                "telegram.webhook_secret",
            ),
            (
                &[("TTFD__TELEGRAM__WEBHOOK_URL", "http://bot.example.org/tg")],
                "telegram.webhook_url",
            ),
            (
                &[("TTFD__TELEGRAM__WEBHOOK_SECRET", "has spaces")],
                "webhook_secret",
            ),
            (
                &[("TTFD__TELEGRAM__WEBHOOK_SECRET", "x")],
                "telegram.webhook_secret",
            ),
            (&[("TTFD__TELEGRAM__MODE", "carrier-pigeon")], "mode"),
        ];
        for (env, named) in cases {
            let err = load(env).expect_err("must be refused").to_string();
            assert!(err.contains(named), "{env:?}: {err}");
        }
    }

    #[test]
    fn the_example_config_shows_the_defaults() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ttfd.example.toml");
        let s = Settings::load_from(Some(&path), Vec::new()).expect("the example loads");
        let (got, want) = (&s.telegram, TelegramSettings::default());
        assert_eq!(
            (got.mode, got.poll_timeout_secs, &got.listen, &got.api_url),
            (
                want.mode,
                want.poll_timeout_secs,
                &want.listen,
                &want.api_url
            )
        );
        assert_eq!(
            (got.query_timeout_ms, got.shutdown_grace_secs),
            (want.query_timeout_ms, want.shutdown_grace_secs)
        );
    }

    #[test]
    fn webhook_mode_serves_the_path_of_its_url() {
        let s = load(&[
            ("TTFD__TELEGRAM__MODE", "webhook"),
            (
                "TTFD__TELEGRAM__WEBHOOK_URL",
                "https://bot.example.org/hooks/tg",
            ),
            (
                "TTFD__TELEGRAM__WEBHOOK_SECRET",
                "s3cret-_s3cret-_s3cret-_s3cret-_",
            ),
        ])
        .expect("loads");
        assert_eq!(s.telegram.webhook_path(), "/hooks/tg");
    }
}
