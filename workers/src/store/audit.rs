//! Reading the audit log (SPEC 7.1): who changed whose XP, or linked whom, and why.
//! The apply path writes it (`store::apply`, step 5); here it is read, newest first.

use sqlx::Row;
use ttfd_shared::Identity;
use ttfd_shared::view::{AuditEntry, rfc3339};
use ttfd_shared::wire::WireIdentity;

use super::{Store, StoreError};

/// Which entries to read. Every filter is optional; entries come newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Entries about the unified user of this identity (any of its identities, as the
    /// member or as a link's other side).
    pub member: Option<Identity>,
    /// Entries whose `data.by` is this identity.
    pub by: Option<Identity>,
    /// Entries with event time at or after / before these (Unix ms).
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only the entry of this event.
    pub event_id: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

impl Store {
    /// The audit entries `query` selects, newest first (event time, then the larger
    /// id), and how many there are in all.
    pub async fn audit(&self, query: &AuditQuery) -> Result<(Vec<AuditEntry>, i64), StoreError> {
        let member = query.member.as_ref();
        let by = query.by.as_ref();
        let rows = sqlx::query(
            "WITH member AS (
                 SELECT m.id FROM identities i JOIN identities m ON m.user_id = i.user_id
                 WHERE i.platform = $1 AND i.external_id = $2)
             SELECT a.event_id, a.ts_ms, a.kind, i.platform, i.external_id,
                    o.platform AS other_platform, o.external_id AS other_user, a.amount,
                    a.reason, a.by_platform, a.by_user, count(*) OVER () AS total
             FROM audit a JOIN identities i ON i.id = a.identity_id
             LEFT JOIN identities o ON o.id = a.other_id
             WHERE ($1::text IS NULL OR a.identity_id IN (SELECT id FROM member)
                                      OR a.other_id IN (SELECT id FROM member))
               AND ($3::text IS NULL OR (a.by_platform = $3 AND a.by_user = $4))
               AND ($5::int8 IS NULL OR a.ts_ms >= $5)
               AND ($6::int8 IS NULL OR a.ts_ms < $6)
               AND ($9::text IS NULL OR a.event_id = $9)
             ORDER BY a.ts_ms DESC, a.event_id DESC
             OFFSET $7 LIMIT $8",
        )
        .bind(member.map(|m| m.platform.as_str()))
        .bind(member.map(|m| m.user.as_str()))
        .bind(by.map(|b| b.platform.as_str()))
        .bind(by.map(|b| b.user.as_str()))
        .bind(query.since_ms)
        .bind(query.until_ms)
        .bind(query.offset.max(0))
        .bind(query.limit.clamp(0, 1000))
        .bind(query.event_id.as_deref())
        .fetch_all(&self.pool)
        .await?;
        let total = rows.first().map_or(0, |r| r.get::<i64, _>("total"));
        let identity = |r: &sqlx::postgres::PgRow, p: &str, u: &str| -> Option<WireIdentity> {
            Some(WireIdentity {
                platform: r.get::<Option<String>, _>(p)?,
                user: r.get::<Option<String>, _>(u)?,
            })
        };
        let entries = rows
            .iter()
            .map(|r| {
                let ts: i64 = r.get("ts_ms");
                AuditEntry {
                    event_id: r.get("event_id"),
                    ts,
                    at: rfc3339(ts).unwrap_or_default(),
                    kind: r.get("kind"),
                    member: WireIdentity {
                        platform: r.get("platform"),
                        user: r.get("external_id"),
                    },
                    other: identity(r, "other_platform", "other_user"),
                    amount: r.get("amount"),
                    reason: r.get("reason"),
                    by: identity(r, "by_platform", "by_user"),
                }
            })
            .collect();
        Ok((entries, total))
    }
}

impl Store {
    /// Whether the audit log holds the entry of event `event_id`: the event was applied.
    /// The identities a link that counts joins `identity` to directly, each with those
    /// links' event ids (SPEC 7.4: what an unlink can take back).
    pub async fn linked(
        &self,
        identity: &ttfd_shared::Identity,
    ) -> Result<Vec<(ttfd_shared::Identity, Vec<String>)>, StoreError> {
        let rows: Vec<(String, String, Vec<String>)> = sqlx::query_as(
            "SELECT o.platform, o.external_id, array_agg(l.event_id::text ORDER BY l.event_id)
             FROM identities me
             JOIN links l ON NOT l.excluded AND (l.identity_a = me.id OR l.identity_b = me.id)
             JOIN identities o
               ON o.id = CASE WHEN l.identity_a = me.id THEN l.identity_b ELSE l.identity_a END
             WHERE me.platform = $1 AND me.external_id = $2
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(identity.platform.as_str())
        .bind(identity.user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(p, u, links)| {
                ttfd_shared::Identity::new(&p, &u)
                    .map(|i| (i, links))
                    .map_err(|e| StoreError::Schema(format!("a stored identity: {e}")))
            })
            .collect()
    }

    pub async fn audited(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM audit WHERE event_id = $1)")
                .bind(event_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
