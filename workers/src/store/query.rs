//! Reads for people, bots and tests: a unified user's profile and the leaderboards.

use std::collections::HashMap;

use sqlx::Row;
use time::{Date, OffsetDateTime};
use ttfd_shared::Identity;
use ttfd_shared::view::{Profile, Standing};
use ttfd_shared::wire::WireIdentity;

use super::{Store, StoreError};

fn rfc3339(ms: Option<i64>) -> Option<String> {
    ttfd_shared::view::rfc3339(ms?)
}

impl Store {
    /// The unified user owning `identity`, or `None` when no event named it yet.
    pub async fn profile(&self, identity: &Identity) -> Result<Option<Profile>, StoreError> {
        let uid: Option<i64> = sqlx::query_scalar(
            "SELECT user_id FROM identities WHERE platform = $1 AND external_id = $2",
        )
        .bind(identity.platform.as_str())
        .bind(identity.user.as_str())
        .fetch_optional(&self.pool)
        .await?;
        match uid {
            Some(uid) => self.profile_by_uid(uid).await,
            None => Ok(None),
        }
    }

    /// The user `uid`, following merge redirects to the survivor; `None` for a user
    /// without any applied event. The user and their identities are read in one snapshot
    /// (a repeatable-read transaction), so a merge committing meanwhile shows either
    /// before or after, never the identities of one with the XP of the other.
    pub async fn profile_by_uid(&self, uid: i64) -> Result<Option<Profile>, StoreError> {
        let mut snapshot = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *snapshot)
            .await?;
        let row = sqlx::query(
            "WITH RECURSIVE chain AS (
                 SELECT u.*, 0 AS depth FROM users u WHERE u.id = $1
                 UNION ALL
                 SELECT u.*, c.depth + 1 FROM users u JOIN chain c ON u.id = c.merged_into
                 WHERE c.depth < 64)
             SELECT * FROM chain WHERE merged_into IS NULL AND first_event_ms IS NOT NULL",
        )
        .bind(uid)
        .fetch_optional(&mut *snapshot)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let uid: i64 = row.get("id");
        let members = sqlx::query(
            "SELECT i.platform, i.external_id, n.name, p.hidden, p.notify
             FROM identities i LEFT JOIN identity_names n ON n.identity_id = i.id
             LEFT JOIN identity_prefs p ON p.identity_id = i.id
             WHERE i.user_id = $1
             ORDER BY n.name_ms DESC NULLS LAST, n.name_event DESC NULLS LAST",
        )
        .bind(uid)
        .fetch_all(&mut *snapshot)
        .await?;
        snapshot.commit().await?;
        let display_name = members
            .first()
            .and_then(|r| r.get::<Option<String>, _>("name"));
        let mut identities: Vec<WireIdentity> = members
            .iter()
            .map(|r| WireIdentity {
                platform: r.get("platform"),
                user: r.get("external_id"),
            })
            .collect();
        identities.sort_by(|a, b| (&a.platform, &a.user).cmp(&(&b.platform, &b.user)));
        let xp: i64 = row.get("xp");
        let peak_rank = u8::try_from(row.get::<i16, _>("peak_rank")).unwrap_or(1);
        let (standings, seasons) = self.places(uid, OffsetDateTime::now_utc().date()).await?;
        Ok(Some(Profile {
            uid,
            display_name,
            xp,
            rank: self.rules.rank(self.rules.rank_index(xp)),
            peak_rank,
            coins: self.rules.coins_for_peak(peak_rank),
            messages: row.get("messages"),
            voice_seconds: row.get("voice_seconds"),
            games_played: row.get("games_played"),
            games_won: row.get("games_won"),
            identities,
            created_at: rfc3339(row.get("first_event_ms")),
            last_active: rfc3339(row.get("last_event_ms")),
            standings,
            seasons,
            hidden: members
                .iter()
                .any(|r| r.get::<Option<bool>, _>("hidden") == Some(true)),
            notify: members
                .iter()
                .all(|r| r.get::<Option<bool>, _>("notify") != Some(false)),
        }))
    }

    /// The leaderboard of the standings `key` (a [`Board`](super::seasons::Board)'s),
    /// highest XP first (ties: the smaller uid first), `limit` rows after skipping
    /// `offset`; from the standings, so any page costs about what the first does.
    pub async fn top(
        &self,
        key: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Standing>, StoreError> {
        let rows = self.standings_page(key, limit, offset).await?;
        self.standing_rows(rows, usize::try_from(offset).unwrap_or(0))
            .await
    }

    /// Leaderboard rows of `(uid, xp)` in order, the first at position `start + 1`,
    /// with each user's name and rank now.
    pub async fn standing_rows(
        &self,
        rows: Vec<(i64, i64)>,
        start: usize,
    ) -> Result<Vec<Standing>, StoreError> {
        let uids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let about: HashMap<i64, (Option<String>, i64)> = sqlx::query_as(
            "SELECT u.id, (SELECT n.name FROM identities i
                           JOIN identity_names n ON n.identity_id = i.id
                           WHERE i.user_id = u.id
                           ORDER BY n.name_ms DESC, n.name_event DESC LIMIT 1), u.xp
             FROM users u WHERE u.id = ANY($1)",
        )
        .bind(&uids)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(uid, name, xp): (i64, Option<String>, i64)| (uid, (name, xp)))
        .collect();
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, (uid, xp))| {
                let (name, total) = about.get(&uid).cloned().unwrap_or((None, xp));
                Standing {
                    position: start + i + 1,
                    uid,
                    display_name: name,
                    xp,
                    rank: self.rules.rank(self.rules.rank_index(total)).name,
                }
            })
            .collect())
    }

    /// XP earned per UTC day by user `uid` (all identities) in `[from, to)`.
    pub async fn xp_by_day(
        &self,
        uid: i64,
        from: Date,
        to: Date,
    ) -> Result<Vec<(Date, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT l.day, sum(l.xp)::int8 FROM xp_ledger l
             JOIN identities i ON i.id = l.identity_id
             WHERE i.user_id = $1 AND l.day >= $2 AND l.day < $3
             GROUP BY l.day HAVING sum(l.xp) <> 0 ORDER BY l.day",
        )
        .bind(uid)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Live unified users (not merged away; an identity created for a batch that then
    /// failed has an empty user, which is not counted).
    pub async fn user_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE merged_into IS NULL AND first_event_ms IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Dead-letter counts per platform, kind and reason code.
    pub async fn dead_letter_counts(
        &self,
    ) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT platform, kind, code, count FROM dead_letters ORDER BY platform, kind, code",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
