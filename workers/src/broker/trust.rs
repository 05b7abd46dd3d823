//! Signatures on events: how a trusted principal vouches for what it publishes, and how
//! the sync consumer tells which principal did (docs/security.md).
//!
//! A signing process adds the header `Ttfd-Signature: <principal> <hex HMAC-SHA256>`,
//! the MAC taken with that principal's key (`trust.keys.<principal>`) over the
//! principal's name, the subject, the `Nats-Msg-Id` and the payload, each followed by a
//! newline. JetStream stores headers with the message, so replays and rebuilds judge an
//! event exactly as its first delivery did. A missing, malformed or wrong signature
//! makes the message a [`Publisher::Platform`] claim: it is never an error by itself.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use ttfd_shared::trust::Publisher;

use crate::settings::{SettingsError, TrustMode, TrustSettings};

/// The header that carries a signature.
pub const SIGNATURE: &str = "Ttfd-Signature";

/// A process's side of the trust model: the keys it holds, the principal it signs what
/// it publishes as, and (for the sync consumer) whether and from where it judges.
#[derive(Clone, Default)]
pub struct Trust {
    keyring: Keyring,
    sign_as: Option<Publisher>,
    mode: TrustMode,
    from_sequence: u64,
}

impl Trust {
    /// From `trust.*`; a process signs as `sign_as` only when it holds that key.
    pub fn from_settings(
        settings: &TrustSettings,
        sign_as: Option<Publisher>,
    ) -> Result<Self, SettingsError> {
        let keyring = Keyring::new(settings.keys()?).with_retired(settings.retired_keys()?);
        Ok(Self {
            sign_as: sign_as.filter(|p| keyring.holds(*p)),
            keyring,
            mode: settings.mode,
            from_sequence: settings.signed_from_sequence,
        })
    }

    /// The principal this process signs as, if any.
    pub fn signs_as(&self) -> Option<Publisher> {
        self.sign_as
    }

    /// The `Ttfd-Signature` value for a message this process publishes, if it signs.
    pub fn signature(&self, subject: &str, msg_id: &str, payload: &[u8]) -> Option<String> {
        self.keyring.sign(self.sign_as?, subject, msg_id, payload)
    }

    /// Who vouches for a stored message, when it is to be judged: `None` in open mode
    /// (which looks at nothing) and for messages stored before
    /// `trust.signed_from_sequence`.
    pub fn judge(
        &self,
        headers: Option<&HeaderMap>,
        subject: &str,
        payload: &[u8],
        stream_sequence: impl FnOnce() -> u64,
    ) -> Option<Publisher> {
        if self.mode == TrustMode::Open || stream_sequence() < self.from_sequence {
            return None;
        }
        let header = |name: &str| headers?.get(name).map(|v| v.as_str());
        let msg_id = header("Nats-Msg-Id").unwrap_or("");
        Some(
            self.keyring
                .publisher(header(SIGNATURE), subject, msg_id, payload),
        )
    }
}

/// The keys a process holds, by principal: the current one, which signs, and retired
/// ones, which are only believed.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<Publisher, SecretString>,
    retired: BTreeMap<Publisher, Vec<SecretString>>,
}

impl Keyring {
    pub fn new(keys: BTreeMap<Publisher, SecretString>) -> Self {
        Self {
            keys,
            retired: BTreeMap::new(),
        }
    }

    /// The same, also believing `retired` keys.
    pub fn with_retired(self, retired: BTreeMap<Publisher, Vec<SecretString>>) -> Self {
        Self { retired, ..self }
    }

    pub fn holds(&self, publisher: Publisher) -> bool {
        self.keys.contains_key(&publisher)
    }

    /// The header value signing a message as `publisher`; `None` without its key.
    pub fn sign(
        &self,
        publisher: Publisher,
        subject: &str,
        msg_id: &str,
        payload: &[u8],
    ) -> Option<String> {
        let key = self.keys.get(&publisher)?;
        let mac = mac(key, publisher, subject, msg_id, payload).finalize();
        Some(format!("{publisher} {}", hex::encode(mac.into_bytes())))
    }

    /// Who vouches for a message: the principal whose valid signature `header` holds,
    /// else [`Publisher::Platform`].
    pub fn publisher(
        &self,
        header: Option<&str>,
        subject: &str,
        msg_id: &str,
        payload: &[u8],
    ) -> Publisher {
        let verified = || {
            let (name, tag) = header?.split_once(' ')?;
            let publisher: Publisher = name.parse().ok()?;
            let tag = hex::decode(tag.trim()).ok()?;
            let retired = self.retired.get(&publisher).into_iter().flatten();
            self.keys
                .get(&publisher)
                .into_iter()
                .chain(retired)
                .any(|key| {
                    mac(key, publisher, subject, msg_id, payload)
                        .verify_slice(&tag)
                        .is_ok()
                })
                .then_some(publisher)
        };
        verified().unwrap_or(Publisher::Platform)
    }
}

fn mac(
    key: &SecretString,
    publisher: Publisher,
    subject: &str,
    msg_id: &str,
    payload: &[u8],
) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC takes a key of any length");
    for part in [
        publisher.as_str().as_bytes(),
        subject.as_bytes(),
        msg_id.as_bytes(),
        payload,
    ] {
        mac.update(part);
        mac.update(b"\n");
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(pairs: &[(Publisher, &str)]) -> Keyring {
        Keyring::new(
            pairs
                .iter()
                .map(|(p, k)| (*p, SecretString::from(*k)))
                .collect(),
        )
    }

    const RELAY_KEY: &str = "relay-key-relay-key-relay-key-32b";
    const ADMIN_KEY: &str = "admin-key-admin-key-admin-key-32b";

    #[test]
    fn a_signature_names_the_principal_that_made_it() {
        let sync = ring(&[(Publisher::Relay, RELAY_KEY), (Publisher::Admin, ADMIN_KEY)]);
        let relay = ring(&[(Publisher::Relay, RELAY_KEY)]);
        let header = relay
            .sign(
                Publisher::Relay,
                "ttfd.events.telegram.link",
                "l:1",
                b"payload",
            )
            .expect("holds the key");
        assert!(header.starts_with("relay "));
        let publisher = sync.publisher(
            Some(&header),
            "ttfd.events.telegram.link",
            "l:1",
            b"payload",
        );
        assert_eq!(publisher, Publisher::Relay);
        assert_eq!(
            relay.sign(Publisher::Admin, "s", "i", b"p"),
            None,
            "no admin key"
        );
    }

    #[test]
    fn after_a_rotation_the_retired_key_is_believed_and_never_signs() {
        let old_relay = ring(&[(Publisher::Relay, RELAY_KEY)]);
        let signed_before = old_relay
            .sign(Publisher::Relay, "ttfd.events.telegram.link", "l:1", b"p")
            .expect("signed");
        let new_key = "relay-key-after-the-rotation-0123";
        let sync = ring(&[(Publisher::Relay, new_key)])
            .with_retired([(Publisher::Relay, vec![SecretString::from(RELAY_KEY)])].into());
        let judged = sync.publisher(
            Some(&signed_before),
            "ttfd.events.telegram.link",
            "l:1",
            b"p",
        );
        assert_eq!(judged, Publisher::Relay);
        let signed_now = sync
            .sign(Publisher::Relay, "ttfd.events.telegram.link", "l:2", b"p")
            .expect("signed");
        assert_eq!(
            signed_now,
            ring(&[(Publisher::Relay, new_key)])
                .sign(Publisher::Relay, "ttfd.events.telegram.link", "l:2", b"p")
                .expect("signed"),
            "signing uses the current key"
        );
        // Without the retired key, the old signature is a platform's claim.
        let forgetful = ring(&[(Publisher::Relay, new_key)]);
        let judged = forgetful.publisher(
            Some(&signed_before),
            "ttfd.events.telegram.link",
            "l:1",
            b"p",
        );
        assert_eq!(judged, Publisher::Platform);
    }

    #[test]
    fn anything_changed_or_forged_is_a_platform_claim() {
        let sync = ring(&[(Publisher::Relay, RELAY_KEY), (Publisher::Admin, ADMIN_KEY)]);
        let (subject, id, payload) = ("ttfd.events.discord.xp", "x:1", b"grant".as_slice());
        let good = sync
            .sign(Publisher::Admin, subject, id, payload)
            .expect("signed");
        let check = |header: Option<&str>, subject: &str, id: &str, payload: &[u8]| {
            sync.publisher(header, subject, id, payload)
        };
        assert_eq!(check(Some(&good), subject, id, payload), Publisher::Admin);
        assert_eq!(
            check(Some(&good), "ttfd.events.telegram.xp", id, payload),
            Publisher::Platform
        );
        assert_eq!(
            check(Some(&good), subject, "x:2", payload),
            Publisher::Platform
        );
        assert_eq!(
            check(Some(&good), subject, id, b"grant!"),
            Publisher::Platform
        );
        // The same tag under another principal's name, a key nobody holds, garbage.
        let renamed = good.replacen("admin", "relay", 1);
        assert_eq!(
            check(Some(&renamed), subject, id, payload),
            Publisher::Platform
        );
        let stranger = ring(&[(Publisher::Admin, "another-key-another-key-another-k")]);
        let forged = stranger
            .sign(Publisher::Admin, subject, id, payload)
            .expect("signed");
        assert_eq!(
            check(Some(&forged), subject, id, payload),
            Publisher::Platform
        );
        for junk in ["", "admin", "admin zz", "root 00", "platform 00"] {
            assert_eq!(
                check(Some(junk), subject, id, payload),
                Publisher::Platform,
                "{junk:?}"
            );
        }
        assert_eq!(check(None, subject, id, payload), Publisher::Platform);
    }
}
