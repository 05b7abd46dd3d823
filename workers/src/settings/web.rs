//! `[web]`: where the site listens, how it is reached, its cookie key,
//! Discord OAuth, the Telegram Login Widget and the ingest tokens.
//!
//! Keys: `web.listen`, `web.public_url`, `web.cookie_key`,
//! `web.retired_cookie_keys.<label>`, `web.session_days`,
//! `web.discord.{client_id, client_secret, authorize_url, token_url, api_url}`,
//! `web.telegram.{bot_token, bot_token_sha256, bot_username, max_auth_age_secs}`,
//! `web.ingest_tokens.<platform>`,
//! `web.rate_limit.{sign_in_per_minute, ingest_per_second, client_ip_header}`,
//! `web.admins`, `web.leaderboard_visibility`. See `docs/web.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum_extra::extract::cookie::Key;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use ttfd_shared::Identity;
use ttfd_shared::Platform;

use super::{SettingsError, invalid};

/// Shortest accepted cookie key and ingest token, in bytes.
pub const MIN_COOKIE_KEY_BYTES: usize = 32;
pub const MIN_INGEST_TOKEN_BYTES: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSettings {
    /// Address the HTTP server binds (`127.0.0.1:0` picks a free port, for tests).
    pub listen: SocketAddr,
    /// The site's address as browsers and Discord see it, e.g. `https://ttfd.example.org`;
    /// the OAuth redirect URL is `<public_url>/auth/discord/callback`. Empty: the
    /// listening address, over http (local use).
    pub public_url: String,
    /// Key that signs the session cookies, at least 32 bytes (e.g. `openssl rand
    /// -base64 48`). May be left empty only while the site is local (a loopback public
    /// URL): a random key is then made at start-up and sessions end with the process.
    pub cookie_key: SecretString,
    /// Keys that signed the cookies before the last rotations, by a label of the
    /// operator's (`2026a`): cookies they signed are still believed, and are signed
    /// again with `cookie_key` when the site next sets them. Never used to sign.
    pub retired_cookie_keys: BTreeMap<String, SecretString>,
    /// How long a sign-in lasts.
    pub session_days: u32,
    pub discord: DiscordOAuthSettings,
    pub telegram: TelegramLoginSettings,
    /// Bearer token per platform for `POST /api/v1/events`; a token publishes only its
    /// own platform's events.
    pub ingest_tokens: BTreeMap<String, SecretString>,
    pub rate_limit: RateLimitSettings,
    /// Identities (`discord:123`) whose sign-in opens the admin page (`/admin`: XP
    /// adjustments and the audit log, docs/moderation.md).
    pub admins: Vec<String>,
    /// Who may read the leaderboards on the site and the API (docs/privacy.md).
    pub leaderboard_visibility: LeaderboardVisibility,
}

/// `web.leaderboard_visibility`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaderboardVisibility {
    /// Anyone (the default).
    #[default]
    Public,
    /// Signed-in members only.
    Members,
    /// Nobody: the site and the API serve no leaderboard.
    Off,
}

/// `web.rate_limit`: how often a client may try to sign in, link or redeem a code, and
/// how often an ingest token may post (docs/security.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Requests to the sign-in, link and code routes (and ingest requests without a
    /// valid token) per client and minute; a burst of as many is allowed.
    pub sign_in_per_minute: u32,
    /// Ingest requests per token and second; a burst of twice as many is allowed.
    pub ingest_per_second: u32,
    /// The request header that holds the client's address when the site is behind a
    /// proxy that sets it (`x-real-ip` behind ingress-nginx; for `x-forwarded-for` the
    /// last address, the one the proxy added, is used). Empty: the connection's peer.
    pub client_ip_header: String,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            sign_in_per_minute: 30,
            ingest_per_second: 50,
            client_ip_header: String::new(),
        }
    }
}

/// `web.discord`: "Sign in with Discord" (OAuth2).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordOAuthSettings {
    /// The application's OAuth2 client id; empty disables "Sign in with Discord".
    pub client_id: String,
    pub client_secret: SecretString,
    pub authorize_url: String,
    pub token_url: String,
    /// Base of the HTTP API; the signed-in user is read from `<api_url>/users/@me`.
    pub api_url: String,
}

/// `web.telegram`: the Telegram Login Widget.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramLoginSettings {
    /// The bot's token: the Login Widget's data is signed with SHA-256 of it. Empty
    /// (and no `bot_token_sha256`) disables Telegram sign-in.
    pub bot_token: SecretString,
    /// Instead of the token: its SHA-256 in hex (`printf %s "$TOKEN" | sha256sum`), all
    /// the site needs to check the widget's data. It cannot drive the bot, so the web
    /// pods need not hold the token. Wins over `bot_token`.
    pub bot_token_sha256: SecretString,
    /// The bot's username (without `@`), shown by the widget.
    pub bot_username: String,
    /// Widget data older than this is refused, in seconds (10 minutes by default); until
    /// then each sign-in's `hash` is remembered as spent, so none is used twice.
    pub max_auth_age_secs: u64,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: String::new(),
            cookie_key: SecretString::default(),
            retired_cookie_keys: BTreeMap::new(),
            session_days: 30,
            discord: DiscordOAuthSettings::default(),
            telegram: TelegramLoginSettings::default(),
            ingest_tokens: BTreeMap::new(),
            rate_limit: RateLimitSettings::default(),
            admins: Vec::new(),
            leaderboard_visibility: LeaderboardVisibility::Public,
        }
    }
}

impl Default for DiscordOAuthSettings {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            client_secret: SecretString::default(),
            authorize_url: "https://discord.com/oauth2/authorize".into(),
            token_url: "https://discord.com/api/oauth2/token".into(),
            api_url: "https://discord.com/api".into(),
        }
    }
}

impl TelegramLoginSettings {
    /// The key the widget's data is signed with, from `bot_token_sha256` or
    /// `bot_token`; `None` when Telegram sign-in is off.
    pub fn login_key(&self) -> Result<Option<[u8; 32]>, SettingsError> {
        let hashed = self.bot_token_sha256.expose_secret().trim();
        if !hashed.is_empty() {
            let mut key = [0u8; 32];
            return hex::decode_to_slice(hashed, &mut key)
                .map(|()| Some(key))
                .map_err(|_| {
                    invalid(
                        "web.telegram.bot_token_sha256",
                        "must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                    )
                });
        }
        let token = self.bot_token.expose_secret();
        Ok((!token.is_empty()).then(|| {
            use sha2::Digest;
            sha2::Sha256::digest(token.as_bytes()).into()
        }))
    }
}

impl Default for TelegramLoginSettings {
    fn default() -> Self {
        Self {
            bot_token: SecretString::default(),
            bot_token_sha256: SecretString::default(),
            bot_username: String::new(),
            max_auth_age_secs: 600,
        }
    }
}

fn is_http_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

impl WebSettings {
    /// The checks of the section's shape, run with every role's settings.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let public = self.public_url.trim_end_matches('/');
        if !public.is_empty() && (!is_http_url(public) || public.contains(['?', '#'])) {
            return Err(invalid(
                "web.public_url",
                "must be an http(s):// URL without query, e.g. https://ttfd.example.org",
            ));
        }
        if self.session_days == 0 {
            return Err(invalid("web.session_days", "must be at least 1"));
        }
        self.admins()?;
        if !self.discord.client_id.is_empty() {
            if self.discord.client_secret.expose_secret().is_empty() {
                return Err(invalid(
                    "web.discord.client_secret",
                    "is required when web.discord.client_id is set",
                ));
            }
            for (key, url) in [
                ("web.discord.authorize_url", &self.discord.authorize_url),
                ("web.discord.token_url", &self.discord.token_url),
                ("web.discord.api_url", &self.discord.api_url),
            ] {
                if reqwest::Url::parse(url).is_err() || !is_http_url(url) {
                    return Err(invalid(key, "must be an http(s):// URL"));
                }
            }
        }
        if self.telegram.login_key()?.is_some() && self.telegram.bot_username.trim().is_empty() {
            return Err(invalid(
                "web.telegram.bot_username",
                "is required with web.telegram.bot_token or bot_token_sha256 (the widget shows it)",
            ));
        }
        if self.rate_limit.sign_in_per_minute == 0 || self.rate_limit.ingest_per_second == 0 {
            return Err(invalid("web.rate_limit", "limits must be at least 1"));
        }
        let header = self.rate_limit.client_ip_header.trim();
        if !header.is_empty() && axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(invalid(
                "web.rate_limit.client_ip_header",
                "is not an HTTP header name",
            ));
        }
        if self.telegram.max_auth_age_secs == 0 {
            return Err(invalid(
                "web.telegram.max_auth_age_secs",
                "must be positive",
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (platform, token) in &self.ingest_tokens {
            let key = format!("web.ingest_tokens.{platform}");
            if Platform::parse(platform).is_err() {
                return Err(invalid(
                    &key,
                    "is not a platform name (^[a-z][a-z0-9_-]{0,31}$)",
                ));
            }
            let token = token.expose_secret();
            if token.len() < MIN_INGEST_TOKEN_BYTES {
                return Err(invalid(
                    &key,
                    format!("a token needs at least {MIN_INGEST_TOKEN_BYTES} characters"),
                ));
            }
            // One token, one platform: a shared token would publish for both.
            if seen.contains(&token) {
                return Err(invalid(&key, "the same token is given to another platform"));
            }
            seen.push(token);
        }
        Ok(())
    }

    /// The site's base URL without a trailing slash, given the address actually bound.
    pub fn base_url(&self, bound: SocketAddr) -> String {
        let public = self.public_url.trim_end_matches('/');
        if public.is_empty() {
            format!("http://{bound}")
        } else {
            public.to_owned()
        }
    }

    /// `web.admins`, parsed (refused naming the entry otherwise).
    pub fn admins(&self) -> Result<Vec<Identity>, SettingsError> {
        self.admins
            .iter()
            .enumerate()
            .map(|(i, a)| {
                Identity::parse(a.trim())
                    .map_err(|e| invalid(&format!("web.admins[{i}]"), e.to_string()))
            })
            .collect()
    }

    /// The keys of `web.retired_cookie_keys`, each at least 32 bytes (refused naming the
    /// key otherwise).
    pub fn retired_cookie_keys(&self) -> Result<Vec<Key>, SettingsError> {
        self.retired_cookie_keys
            .iter()
            .map(|(label, key)| {
                let key = key.expose_secret().as_bytes();
                if key.len() < MIN_COOKIE_KEY_BYTES {
                    return Err(invalid(
                        &format!("web.retired_cookie_keys.{label}"),
                        format!("must be at least {MIN_COOKIE_KEY_BYTES} bytes"),
                    ));
                }
                Ok(Key::derive_from(key))
            })
            .collect()
    }

    /// The key signing the cookies. Outside a local site a missing or short
    /// `web.cookie_key` is refused, naming the key.
    pub fn cookie_key(&self, base_url: &str) -> Result<Key, SettingsError> {
        let key = self.cookie_key.expose_secret().as_bytes();
        if key.len() >= MIN_COOKIE_KEY_BYTES {
            return Ok(Key::derive_from(key));
        }
        if !key.is_empty() {
            return Err(invalid(
                "web.cookie_key",
                format!(
                    "must be at least {MIN_COOKIE_KEY_BYTES} bytes (try `openssl rand -base64 48`)"
                ),
            ));
        }
        if is_local(base_url) {
            tracing::warn!(
                "web.cookie_key is not set: using a random key; sign-ins end when this process stops"
            );
            return Ok(Key::generate());
        }
        Err(invalid(
            "web.cookie_key",
            format!(
                "is required for a site that is not local ({base_url}): at least {MIN_COOKIE_KEY_BYTES} bytes"
            ),
        ))
    }
}

/// Whether a base URL is reachable from this machine only (loopback).
fn is_local(base_url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base_url) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> WebSettings {
        WebSettings::default()
    }

    #[test]
    fn a_local_site_may_run_without_a_cookie_key() {
        let s = local();
        let base = s.base_url("127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(base, "http://127.0.0.1:8080");
        assert!(s.cookie_key(&base).is_ok());
    }

    #[test]
    fn a_public_site_needs_a_long_cookie_key_and_the_error_names_it() {
        let mut s = local();
        s.public_url = "https://ttfd.example.org/".into();
        let base = s.base_url("0.0.0.0:80".parse().expect("addr"));
        assert_eq!(base, "https://ttfd.example.org");
        let err = s.cookie_key(&base).expect_err("refused").to_string();
        assert!(err.contains("web.cookie_key"), "{err}");
        s.cookie_key = SecretString::from("short");
        let err = s.cookie_key(&base).expect_err("refused").to_string();
        assert!(
            err.contains("web.cookie_key") && err.contains("32"),
            "{err}"
        );
        s.cookie_key = SecretString::from("k".repeat(48));
        assert!(s.cookie_key(&base).is_ok());
    }

    #[test]
    fn the_example_config_file_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/ttfd.example.toml");
        let s = crate::settings::Settings::load_from(Some(&path), Vec::new()).expect("loads");
        assert_eq!(s.web.listen.port(), 8080);
        assert_eq!(
            s.web.discord.token_url,
            DiscordOAuthSettings::default().token_url
        );
    }

    #[test]
    fn leaderboard_visibility_is_read_and_a_bad_value_names_the_key() {
        let load = |v: &str| {
            crate::settings::Settings::load_from(
                None,
                vec![("TTFD__WEB__LEADERBOARD_VISIBILITY".to_owned(), v.to_owned())],
            )
        };
        assert_eq!(
            load("members").expect("loads").web.leaderboard_visibility,
            LeaderboardVisibility::Members
        );
        let err = load("friends").expect_err("refused").to_string();
        assert!(err.contains("leaderboard_visibility"), "{err}");
    }

    #[test]
    fn ingest_tokens_come_from_the_environment() {
        let s = crate::settings::Settings::load_from(
            None,
            vec![(
                "TTFD__WEB__INGEST_TOKENS__WEBSITE".to_owned(),
                "tok-abcdefghijklmnop".to_owned(),
            )],
        )
        .expect("loads");
        assert_eq!(
            s.web.ingest_tokens["website"].expose_secret(),
            "tok-abcdefghijklmnop"
        );
    }

    #[test]
    fn bad_sections_name_their_key() {
        let mut s = local();
        s.discord.client_id = "123".into();
        assert!(
            s.validate()
                .expect_err("no secret")
                .to_string()
                .contains("web.discord.client_secret")
        );
        let mut s = local();
        s.ingest_tokens
            .insert("Bad".into(), SecretString::from("x".repeat(20)));
        assert!(
            s.validate()
                .expect_err("bad platform")
                .to_string()
                .contains("web.ingest_tokens.Bad")
        );
        let mut s = local();
        s.ingest_tokens
            .insert("website".into(), SecretString::from("short"));
        assert!(s.validate().is_err());
        let mut s = local();
        s.ingest_tokens
            .insert("a".into(), SecretString::from("x".repeat(20)));
        s.ingest_tokens
            .insert("b".into(), SecretString::from("x".repeat(20)));
        assert!(s.validate().is_err(), "a token shared by two platforms");
        let mut s = local();
        s.public_url = "ftp://x".into();
        assert!(
            s.validate()
                .expect_err("bad url")
                .to_string()
                .contains("web.public_url")
        );
    }
}
