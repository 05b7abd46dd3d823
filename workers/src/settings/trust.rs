//! `[trust]`: who may claim what (docs/security.md): whether the sync consumer judges
//! claims by their publisher, and the keys principals sign with. Which principal a
//! process signs as follows from what it is (the sync role's relay signs as `relay`,
//! operators' commands as `admin`), when it holds that principal's key.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use ttfd_shared::trust::Publisher;

use super::{SettingsError, invalid};

/// Shortest key accepted, in bytes: an HMAC-SHA256 key should carry 256 bits.
pub const MIN_KEY_LEN: usize = 32;

/// Whether the sync consumer checks who may claim what.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustMode {
    /// Every valid event counts, whoever published it (SPEC v1; the local demo).
    #[default]
    Open,
    /// A claim counts only from a publisher that may make it (`ttfd_shared::trust::admit`),
    /// proven by its signature; other claims are dead-lettered with the reason.
    Signed,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustSettings {
    /// `open` (the default) or `signed`.
    pub mode: TrustMode,
    /// The secret key of each signing principal, by name: `relay`, `moderator`, `admin`
    /// (`TTFD__TRUST__KEYS__RELAY`, ...). The sync role needs every key it verifies; a
    /// process that signs needs its own; nobody else holds one.
    pub keys: BTreeMap<String, SecretString>,
    /// Keys a principal signed with before its current one, by principal and a name of
    /// your choice (`TTFD__TRUST__RETIRED_KEYS__RELAY__2026A`): still believed, never
    /// used to sign, so that after a rotation the events signed earlier are judged as
    /// they were, in replays and rebuilds too.
    pub retired_keys: BTreeMap<String, BTreeMap<String, SecretString>>,
    /// In `signed` mode, the stream sequence from which messages are judged by their
    /// publisher: those stored earlier, before signing was switched on, count as they
    /// did. 0 (the default): every message.
    pub signed_from_sequence: u64,
}

impl TrustSettings {
    /// The current key of each principal.
    pub fn keys(&self) -> Result<BTreeMap<Publisher, SecretString>, SettingsError> {
        self.keys
            .iter()
            .map(|(name, key)| {
                let at = format!("trust.keys.{name}");
                Ok((principal(name, &at)?, checked(key, &at)?))
            })
            .collect()
    }

    /// The retired keys of each principal (believed, never used to sign).
    pub fn retired_keys(&self) -> Result<BTreeMap<Publisher, Vec<SecretString>>, SettingsError> {
        self.retired_keys
            .iter()
            .map(|(name, keys)| {
                let at = format!("trust.retired_keys.{name}");
                let publisher = principal(name, &at)?;
                let keys = keys
                    .iter()
                    .map(|(label, key)| checked(key, &format!("{at}.{label}")))
                    .collect::<Result<_, _>>()?;
                Ok((publisher, keys))
            })
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let keys = self.keys()?;
        self.retired_keys()?;
        if self.mode == TrustMode::Signed && !keys.contains_key(&Publisher::Relay) {
            return Err(invalid(
                "trust.mode",
                "signed needs trust.keys.relay (the sync role signs its relay's links with it) \
                 and the keys of the other principals it should believe (admin, moderator)",
            ));
        }
        Ok(())
    }
}

fn principal(name: &str, at: &str) -> Result<Publisher, SettingsError> {
    let publisher: Publisher = name.parse().map_err(|e| invalid(at, e))?;
    if publisher == Publisher::Platform {
        return Err(invalid(at, "platform publishers do not sign"));
    }
    Ok(publisher)
}

fn checked(key: &SecretString, at: &str) -> Result<SecretString, SettingsError> {
    if key.expose_secret().len() < MIN_KEY_LEN {
        return Err(invalid(
            at,
            format!("a key needs at least {MIN_KEY_LEN} bytes (openssl rand -hex 32)"),
        ));
    }
    Ok(key.clone())
}
