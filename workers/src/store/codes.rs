//! One-time link codes: how two identities prove they belong to one person when no
//! OAuth provider vouches for both (SPEC 1). Shared by both bots and the website.
//!
//! An identity asks for a code on one platform and enters it on another. A code is
//! [`LEN`] characters from an alphabet without look-alikes, lives [`LIFETIME_MS`], and
//! is consumed at most once even when two redeemers race (the row is locked and marked
//! in one transaction). A redeemer gets [`MAX_FAILURES`] wrong codes per
//! [`FAILURE_WINDOW_MS`]; six characters from 31 give 887 million codes, so guessing a
//! live one is hopeless at that pace. A successful redemption writes the `link` event
//! (proof `code`) to the outbox in the same transaction that consumed the code, and the
//! sync replicas' relay publishes it to the events stream: a crash in between loses
//! nothing, and the event id keeps it applied once.

use rand::Rng;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use ttfd_shared::wire::{self, EventId, Proof, WireIdentity};
use ttfd_shared::{Event, Identity, Payload};

use super::{Store, StoreError};

/// Upper-case letters and digits without 0/O, 1/I/L: nothing to misread.
pub const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
pub const LEN: usize = 6;
/// How long a code can be redeemed: 10 minutes.
pub const LIFETIME_MS: i64 = 10 * 60_000;
/// Wrong codes a redeemer may enter per window before being told to wait.
pub const MAX_FAILURES: i32 = 5;
/// Wrong codes all redeemers together may enter per window: a guesser who makes up a
/// new redeemer per guess gets no further than this (about 1 in 10^5 per day to hit
/// one of ten live codes among 887 million).
pub const GLOBAL_MAX_FAILURES: i32 = 200;
pub const FAILURE_WINDOW_MS: i64 = 10 * 60_000;
/// The `link_code_failures` row counting every redeemer's failures (`*` is no
/// platform's name, so it never meets a real identity).
const EVERYONE: (&str, &str) = ("*", "*");

/// A well-formed code, as a person may type it: case, spaces and dashes do not matter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkCode(String);

impl LinkCode {
    /// `None` when the input cannot be a code (wrong length or characters).
    pub fn parse(input: &str) -> Option<Self> {
        let code: String = input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let valid = code.len() == LEN && code.bytes().all(|b| ALPHABET.contains(&b));
        valid.then_some(Self(code))
    }

    pub fn random(rng: &mut impl Rng) -> Self {
        Self(
            (0..LEN)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A code handed to its issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCode {
    pub code: String,
    /// Unix milliseconds after which the code no longer works.
    pub expires_ms: i64,
}

/// What entering a code did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Redemption {
    /// The link event (identity = redeemer, other = issuer, proof `code`) is recorded
    /// and will be published by the relay; the profiles merge once it is applied.
    Linked { issuer: WireIdentity },
    /// The two identities already belong to one user: nothing to do (code not used up).
    AlreadyOneUser { issuer: WireIdentity },
    /// The redeemer issued this code itself.
    SelfLink,
    /// No such code, or it was used or has expired.
    Invalid,
    /// Too many wrong codes: try again after this many seconds.
    TooManyAttempts { retry_after_secs: u64 },
}

impl Store {
    /// Issues a fresh code to `issuer`; any earlier unused code of theirs stops working,
    /// so only the newest one shown to them is live.
    pub async fn issue_link_code(
        &self,
        issuer: &Identity,
        now_ms: i64,
    ) -> Result<IssuedCode, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM link_codes
             WHERE (platform = $1 AND external_id = $2 AND redeemed_by IS NULL)
                OR expires_ms < $3 - 86400000",
        )
        .bind(issuer.platform.as_str())
        .bind(issuer.user.as_str())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let expires_ms = now_ms + LIFETIME_MS;
        // 887 million codes and few live ones: a collision is rare, and just redrawn.
        loop {
            let code = LinkCode::random(&mut rand::rng());
            let inserted = sqlx::query(
                "INSERT INTO link_codes (code, platform, external_id, issued_ms, expires_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (code) DO NOTHING",
            )
            .bind(code.as_str())
            .bind(issuer.platform.as_str())
            .bind(issuer.user.as_str())
            .bind(now_ms)
            .bind(expires_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                tx.commit().await?;
                return Ok(IssuedCode {
                    code: code.0,
                    expires_ms,
                });
            }
        }
    }

    /// Redeems `code` for `redeemer`: on success, records the `link` event for the relay
    /// to publish. Wrong codes count towards the redeemer's attempt limit.
    pub async fn redeem_link_code(
        &self,
        redeemer: &Identity,
        code: &str,
        now_ms: i64,
    ) -> Result<Redemption, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The failure rows, everyone's and then the redeemer's, locked in that order:
        // concurrent attempts queue behind them, so the limits hold even when they race.
        let key = (redeemer.platform.as_str(), redeemer.user.as_str());
        for (key, limit) in [(EVERYONE, GLOBAL_MAX_FAILURES), (key, MAX_FAILURES)] {
            let (failures, window_start) = failure_window(&mut tx, key, now_ms).await?;
            if failures >= limit {
                let wait_ms = (window_start + FAILURE_WINDOW_MS - now_ms).max(1000);
                tx.commit().await?;
                return Ok(Redemption::TooManyAttempts {
                    retry_after_secs: u64::try_from(wait_ms).unwrap_or(1000).div_ceil(1000),
                });
            }
        }

        let code = LinkCode::parse(code);
        let found: Option<(String, String, i64)> = match &code {
            Some(code) => {
                sqlx::query_as(
                    "SELECT platform, external_id, issued_ms FROM link_codes
                     WHERE code = $1 AND redeemed_by IS NULL AND expires_ms > $2
                     FOR UPDATE",
                )
                .bind(code.as_str())
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => None,
        };
        let (Some(code), Some((platform, user, issued_ms))) = (code, found) else {
            return fail(tx, redeemer).await;
        };
        let Ok(issuer) = Identity::new(&platform, &user) else {
            return fail(tx, redeemer).await;
        };
        if issuer == *redeemer {
            tx.commit().await?;
            return Ok(Redemption::SelfLink);
        }
        let same_user: bool = sqlx::query_scalar(
            "SELECT count(DISTINCT user_id) = 1 AND count(*) = 2 FROM identities
             WHERE (platform, external_id) IN (($1, $2), ($3, $4))",
        )
        .bind(issuer.platform.as_str())
        .bind(issuer.user.as_str())
        .bind(redeemer.platform.as_str())
        .bind(redeemer.user.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if same_user {
            tx.commit().await?;
            return Ok(Redemption::AlreadyOneUser {
                issuer: (&issuer).into(),
            });
        }

        sqlx::query("UPDATE link_codes SET redeemed_by = $2, redeemed_ms = $3 WHERE code = $1")
            .bind(code.as_str())
            .bind(redeemer.to_string())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let event = Event {
            // Unique per issued code: the same text drawn again later is a new fact.
            id: EventId::parse(&format!("link:code:{}:{issued_ms}", code.as_str()))
                .expect("a code and a number make a valid id"),
            ts: now_ms,
            identity: redeemer.clone(),
            name: None,
            payload: Payload::Link {
                other: issuer.clone(),
                proof: Proof::Code,
                by: None,
            },
        };
        enqueue(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(Redemption::Linked {
            issuer: (&issuer).into(),
        })
    }

    /// Spends a one-time proof (`kind`: what it is, e.g. `telegram_login`): `true` the
    /// first time, `false` for every replay until `expires_ms`, on any replica. Proofs
    /// past their expiry are forgotten (they are refused by age by then).
    pub async fn spend_once(
        &self,
        kind: &str,
        token: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A bounded clean-up per call keeps the table to the live proofs.
        sqlx::query(
            "DELETE FROM spent_tokens WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM spent_tokens WHERE expires_ms <= $1 LIMIT 100))",
        )
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let spent = sqlx::query(
            "INSERT INTO spent_tokens (kind, token, expires_ms) VALUES ($1, $2, $3)
             ON CONFLICT (kind, token) DO UPDATE SET expires_ms = EXCLUDED.expires_ms
             WHERE spent_tokens.expires_ms <= $4",
        )
        .bind(kind)
        .bind(token)
        .bind(expires_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(spent == 1)
    }

    /// Ends every session of `identity` signed in at or before `now_ms` ("sign out
    /// everywhere").
    pub async fn revoke_sessions(
        &self,
        identity: &Identity,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO session_revocations (identity, revoked_ms) VALUES ($1, $2)
             ON CONFLICT (identity) DO UPDATE
               SET revoked_ms = GREATEST(session_revocations.revoked_ms, EXCLUDED.revoked_ms)",
        )
        .bind(identity.to_string())
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When the sessions of `identity` were last revoked, if ever.
    pub async fn sessions_revoked(&self, identity: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT revoked_ms FROM session_revocations WHERE identity = $1")
                .bind(identity)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Records `event` for the relay to publish to the events stream (with its id as
    /// `Nats-Msg-Id`): for facts established by a transaction, such as a proven link.
    pub async fn enqueue_event(&self, event: &Event) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The failures counted under `key` in its current window (opening a new window when
/// the last one has passed), its row locked until the transaction ends.
async fn failure_window(
    tx: &mut Transaction<'static, Postgres>,
    (platform, external_id): (&str, &str),
    now_ms: i64,
) -> Result<(i32, i64), StoreError> {
    Ok(sqlx::query_as(
        "INSERT INTO link_code_failures (platform, external_id, window_start_ms, failures)
         VALUES ($1, $2, $3, 0)
         ON CONFLICT (platform, external_id) DO UPDATE SET
           failures = CASE WHEN link_code_failures.window_start_ms <= $3 - $4
                           THEN 0 ELSE link_code_failures.failures END,
           window_start_ms = CASE WHEN link_code_failures.window_start_ms <= $3 - $4
                                  THEN $3 ELSE link_code_failures.window_start_ms END
         RETURNING failures, window_start_ms",
    )
    .bind(platform)
    .bind(external_id)
    .bind(now_ms)
    .bind(FAILURE_WINDOW_MS)
    .fetch_one(&mut **tx)
    .await?)
}

/// A wrong code: one more failure for the redeemer and for everyone.
async fn fail(
    mut tx: Transaction<'static, Postgres>,
    redeemer: &Identity,
) -> Result<Redemption, StoreError> {
    sqlx::query(
        "UPDATE link_code_failures SET failures = failures + 1
         WHERE (platform, external_id) IN (($1, $2), ($3, $4))",
    )
    .bind(redeemer.platform.as_str())
    .bind(redeemer.user.as_str())
    .bind(EVERYONE.0)
    .bind(EVERYONE.1)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Redemption::Invalid)
}

/// The outbox row of an event: its envelope as JSON (the relay turns it back into the
/// MessagePack envelope and checks it with the consumers' rules).
pub(crate) async fn enqueue(
    tx: &mut Transaction<'static, Postgres>,
    event: &Event,
) -> Result<(), StoreError> {
    let body: serde_json::Value = rmp_serde::from_slice(&wire::encode(event))
        .expect("an envelope is a map of strings and numbers, which JSON holds");
    sqlx::query("INSERT INTO outbox (topic, body) VALUES ('event', $1)")
        .bind(body)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_the_way_people_type_them() {
        let code = LinkCode::parse(" ab3-k9x ").expect("a code");
        assert_eq!(code.as_str(), "AB3K9X");
        assert_eq!(LinkCode::parse("AB3 K9X"), Some(code));
    }

    #[test]
    fn look_alikes_and_wrong_lengths_are_not_codes() {
        for bad in [
            "AB3K9", "AB3K9XY", "AB0K9X", "ABOK9X", "AB1K9X", "ABIK9X", "ABLK9X", "",
        ] {
            assert_eq!(LinkCode::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn random_codes_parse_back() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let code = LinkCode::random(&mut rng);
            assert_eq!(LinkCode::parse(code.as_str()), Some(code));
        }
    }
}
