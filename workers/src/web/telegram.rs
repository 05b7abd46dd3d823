//! Telegram Login Widget: checking that the data a browser brings back was signed by
//! Telegram for our bot, and is fresh.
//!
//! Telegram's rule: the data-check-string is every received field except `hash`, as
//! `key=value`, sorted by key, joined with `\n`; `hash` is the hex HMAC-SHA256 of it
//! keyed with SHA-256 of the bot token. Pure: no I/O, the clock is a parameter.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use ttfd_shared::Identity;

/// Why widget data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WidgetError {
    #[error("the Telegram login data lacks {0}")]
    Missing(&'static str),
    #[error("the Telegram login data is not signed by Telegram for this site's bot")]
    BadSignature,
    #[error("the Telegram login is too old; sign in with Telegram again")]
    Stale,
    #[error("the Telegram login data is malformed: {0}")]
    Malformed(&'static str),
}

/// A Telegram account proven by the widget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelegramUser {
    pub identity: Identity,
    /// First and last name as Telegram gives them, else the username.
    pub name: Option<String>,
    /// When the data stops being accepted by age, Unix seconds: until then its `hash`
    /// must be remembered as spent.
    pub expires_secs: i64,
    /// The `hash` that signed the data: one sign-in's proof, spent once.
    pub hash: String,
}

/// Clock skew tolerated for an `auth_date` in the future, in seconds.
const MAX_SKEW_SECS: i64 = 300;

/// The key Telegram signs Login Widget data with for a bot: SHA-256 of its token. The
/// web role needs only this (`web.telegram.bot_token_sha256`), not the token.
pub fn login_key(bot_token: &str) -> [u8; 32] {
    Sha256::digest(bot_token.as_bytes()).into()
}

/// Checks the widget's `fields` (everything it sent, `hash` included, nothing else)
/// against the bot's `key` ([`login_key`]), at `now_secs`, refusing data older than
/// `max_age_secs`.
pub fn verify(
    fields: &BTreeMap<String, String>,
    key: &[u8; 32],
    now_secs: i64,
    max_age_secs: u64,
) -> Result<TelegramUser, WidgetError> {
    let hash = fields.get("hash").ok_or(WidgetError::Missing("hash"))?;
    let given = hex::decode(hash).map_err(|_| WidgetError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data_check_string(fields).as_bytes());
    // verify_slice compares in constant time.
    mac.verify_slice(&given)
        .map_err(|_| WidgetError::BadSignature)?;

    let auth_date: i64 = fields
        .get("auth_date")
        .ok_or(WidgetError::Missing("auth_date"))?
        .parse()
        .map_err(|_| WidgetError::Malformed("auth_date is not a number"))?;
    let max_age = i64::try_from(max_age_secs).unwrap_or(i64::MAX);
    if now_secs.saturating_sub(auth_date) > max_age || auth_date > now_secs + MAX_SKEW_SECS {
        return Err(WidgetError::Stale);
    }
    let id = fields.get("id").ok_or(WidgetError::Missing("id"))?;
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WidgetError::Malformed("id is not a Telegram user id"));
    }
    let identity =
        Identity::new("telegram", id).map_err(|_| WidgetError::Malformed("bad user id"))?;
    let full_name = [fields.get("first_name"), fields.get("last_name")]
        .into_iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let name = Some(full_name)
        .filter(|n| !n.is_empty())
        .or_else(|| fields.get("username").cloned())
        .map(|n| n.chars().take(100).collect());
    Ok(TelegramUser {
        identity,
        name,
        expires_secs: auth_date.saturating_add(max_age),
        hash: hash.to_ascii_lowercase(),
    })
}

/// `key=value` lines of every field but `hash`, sorted by key.
pub fn data_check_string(fields: &BTreeMap<String, String>) -> String {
    fields
        .iter()
        .filter(|(k, _)| k.as_str() != "hash")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Signs `fields` as Telegram does (for tests and fakes).
pub fn sign(fields: &BTreeMap<String, String>, bot_token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&Sha256::digest(bot_token.as_bytes()))
        .expect("HMAC takes a key of any length");
    mac.update(data_check_string(fields).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456:ABC-test-token";
    const NOW: i64 = 1_790_000_000;

    fn signed(auth_date: i64) -> BTreeMap<String, String> {
        let mut f: BTreeMap<String, String> = [
            ("id", "42424242"),
            ("first_name", "Ada"),
            ("last_name", "Lovelace"),
            ("username", "ada"),
            ("photo_url", "https://t.me/i/userpic/320/ada.jpg"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        f.insert("auth_date".into(), auth_date.to_string());
        let hash = sign(&f, TOKEN);
        f.insert("hash".into(), hash);
        f
    }

    #[test]
    fn valid_widget_data_proves_the_telegram_account() {
        let user = verify(&signed(NOW - 60), &login_key(TOKEN), NOW, 86_400).expect("valid");
        assert_eq!(user.identity.to_string(), "telegram:42424242");
        assert_eq!(user.name.as_deref(), Some("Ada Lovelace"));
    }

    #[test]
    fn the_data_check_string_is_sorted_lines_without_the_hash() {
        let f = signed(NOW);
        assert_eq!(
            data_check_string(&f),
            format!(
                "auth_date={NOW}\nfirst_name=Ada\nid=42424242\nlast_name=Lovelace\n\
                 photo_url=https://t.me/i/userpic/320/ada.jpg\nusername=ada"
            )
        );
    }

    #[test]
    fn tampered_data_is_refused() {
        let mut f = signed(NOW);
        f.insert("id".into(), "1".into());
        assert_eq!(
            verify(&f, &login_key(TOKEN), NOW, 86_400),
            Err(WidgetError::BadSignature)
        );
        let mut f = signed(NOW);
        f.insert("extra".into(), "x".into());
        assert_eq!(
            verify(&f, &login_key(TOKEN), NOW, 86_400),
            Err(WidgetError::BadSignature)
        );
        let f = signed(NOW);
        assert_eq!(
            verify(&f, &login_key("another:token"), NOW, 86_400),
            Err(WidgetError::BadSignature)
        );
        let mut f = signed(NOW);
        f.insert("hash".into(), "not hex".into());
        assert_eq!(
            verify(&f, &login_key(TOKEN), NOW, 86_400),
            Err(WidgetError::BadSignature)
        );
        let mut f = signed(NOW);
        f.remove("hash");
        assert_eq!(
            verify(&f, &login_key(TOKEN), NOW, 86_400),
            Err(WidgetError::Missing("hash"))
        );
    }

    #[test]
    fn stale_or_future_data_is_refused() {
        assert_eq!(
            verify(&signed(NOW - 86_401), &login_key(TOKEN), NOW, 86_400),
            Err(WidgetError::Stale)
        );
        assert_eq!(
            verify(&signed(NOW + 3600), &login_key(TOKEN), NOW, 86_400),
            Err(WidgetError::Stale)
        );
        assert!(verify(&signed(NOW - 86_400), &login_key(TOKEN), NOW, 86_400).is_ok());
    }
}
