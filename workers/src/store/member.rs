//! Everything the projections hold about one unified user, identity by identity: what
//! a member's data export (docs/privacy.md) is made of, besides the events stream.

use serde::Serialize;
use ttfd_shared::view::rfc3339;

use super::{Store, StoreError};

/// One identity of the user, with what the projections keep of it alone.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityRecord {
    pub platform: String,
    pub user: String,
    /// Its display name, from its newest named event.
    pub name: Option<String>,
    pub messages: i64,
    pub voice_seconds: i64,
    pub games_played: i64,
    pub games_won: i64,
    /// Event time of its first and newest event (links aside), RFC 3339.
    pub first_event: Option<String>,
    pub last_event: Option<String>,
    /// Its preferences (SPEC 7.3): `null` where it never set one.
    pub hidden: Option<bool>,
    pub notify: Option<bool>,
}

/// XP of one identity on one UTC day, with what it is made of (the XP statement's
/// columns: docs/rules.md).
#[derive(Debug, Clone, Serialize)]
pub struct LedgerRecord {
    pub day: String,
    pub platform: String,
    pub user: String,
    #[serde(flatten)]
    pub tally: ttfd_shared::view::Tally,
}

/// A link one of the user's identities is part of.
#[derive(Debug, Clone, Serialize)]
pub struct LinkRecord {
    pub event_id: String,
    /// The identity whose event it is, and the other one, as `platform:user`.
    pub from: String,
    pub to: String,
    pub proof: String,
    pub at: Option<String>,
    /// Whether it still counts (an unlink takes links back, SPEC 7.4).
    pub counts: bool,
}

/// What the projections hold about a user.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberRecords {
    pub identities: Vec<IdentityRecord>,
    pub ledger: Vec<LedgerRecord>,
    pub links: Vec<LinkRecord>,
}

impl Store {
    /// The records of user `uid` (a live one: its identities are its own), in one
    /// snapshot.
    pub async fn member_records(&self, uid: i64) -> Result<MemberRecords, StoreError> {
        #[derive(sqlx::FromRow)]
        struct IdentityRow {
            platform: String,
            external_id: String,
            name: Option<String>,
            messages: i64,
            voice_seconds: i64,
            games_played: i64,
            games_won: i64,
            first_ms: Option<i64>,
            last_ms: Option<i64>,
            hidden: Option<bool>,
            notify: Option<bool>,
        }
        #[derive(sqlx::FromRow)]
        struct LinkRow {
            event_id: String,
            from_platform: String,
            from_user: String,
            to_platform: String,
            to_user: String,
            proof: String,
            ts_ms: i64,
            counts: bool,
        }
        let mut snapshot = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *snapshot)
            .await?;
        let identities: Vec<IdentityRow> = sqlx::query_as(
            "SELECT i.platform, i.external_id, n.name, c.messages, c.voice_seconds,
                    c.games_played, c.games_won, c.first_ms, c.last_ms, p.hidden, p.notify
             FROM identities i LEFT JOIN identity_names n ON n.identity_id = i.id
             LEFT JOIN identity_prefs p ON p.identity_id = i.id
             CROSS JOIN LATERAL (
                 SELECT coalesce(sum(messages), 0)::int8 AS messages,
                        coalesce(sum(voice_seconds), 0)::int8 AS voice_seconds,
                        coalesce(sum(games_played), 0)::int8 AS games_played,
                        coalesce(sum(games_won), 0)::int8 AS games_won,
                        min(first_ms) AS first_ms, max(last_ms) AS last_ms
                 FROM xp_ledger WHERE identity_id = i.id) c
             WHERE i.user_id = $1 ORDER BY i.platform, i.external_id",
        )
        .bind(uid)
        .fetch_all(&mut *snapshot)
        .await?;
        let ledger = super::statement::tallies(&mut *snapshot, uid, (None, None)).await?;
        let links: Vec<LinkRow> = sqlx::query_as(
            "SELECT l.event_id::text AS event_id, a.platform AS from_platform,
                    a.external_id AS from_user, b.platform AS to_platform,
                    b.external_id AS to_user, l.proof, l.ts_ms, NOT l.excluded AS counts
             FROM links l JOIN identities a ON a.id = l.identity_a
             JOIN identities b ON b.id = l.identity_b
             WHERE a.user_id = $1 OR b.user_id = $1
             ORDER BY l.ts_ms, l.event_id",
        )
        .bind(uid)
        .fetch_all(&mut *snapshot)
        .await?;
        snapshot.commit().await?;
        Ok(MemberRecords {
            identities: identities
                .into_iter()
                .map(|r| IdentityRecord {
                    platform: r.platform,
                    user: r.external_id,
                    name: r.name,
                    messages: r.messages,
                    voice_seconds: r.voice_seconds,
                    games_played: r.games_played,
                    games_won: r.games_won,
                    first_event: r.first_ms.and_then(rfc3339),
                    last_event: r.last_ms.and_then(rfc3339),
                    hidden: r.hidden,
                    notify: r.notify,
                })
                .collect(),
            ledger: ledger
                .into_iter()
                .map(|(platform, user, day, tally)| LedgerRecord {
                    day: day.to_string(),
                    platform,
                    user,
                    tally,
                })
                .collect(),
            links: links
                .into_iter()
                .map(|l| LinkRecord {
                    event_id: l.event_id,
                    from: format!("{}:{}", l.from_platform, l.from_user),
                    to: format!("{}:{}", l.to_platform, l.to_user),
                    proof: l.proof,
                    at: rfc3339(l.ts_ms),
                    counts: l.counts,
                })
                .collect(),
        })
    }
}
