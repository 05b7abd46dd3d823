//! The XP statement (docs/rules.md, "The XP statement"): a member's ledger rows of a
//! period, by platform and day, with what their XP is made of.

use time::{Date, Duration};
use ttfd_shared::view::{Period, Statement, Tally, UnpaidVoice};

use super::{Store, StoreError};

#[derive(sqlx::FromRow)]
struct Row {
    platform: String,
    external_id: String,
    day: Date,
    xp: i64,
    xp_messages: i64,
    xp_voice: i64,
    xp_games: i64,
    xp_grants: i64,
    messages: i64,
    voice_seconds: i64,
    games_played: i64,
    unpaid_afk: i64,
    unpaid_deafened: i64,
    unpaid_muted: i64,
    unpaid_alone: i64,
}

/// One ledger row of a user: the identity's platform and id, the day, what it holds.
pub type TallyRow = (String, String, Date, Tally);

impl From<Row> for TallyRow {
    fn from(r: Row) -> Self {
        let tally = Tally {
            xp: r.xp,
            messages_xp: r.xp_messages,
            voice_xp: r.xp_voice,
            games_xp: r.xp_games,
            grants_xp: r.xp_grants,
            messages: r.messages,
            voice_seconds: r.voice_seconds,
            games_played: r.games_played,
            unpaid_voice: UnpaidVoice {
                afk: r.unpaid_afk,
                deafened: r.unpaid_deafened,
                muted: r.unpaid_muted,
                alone: r.unpaid_alone,
            },
        };
        (r.platform, r.external_id, r.day, tally)
    }
}

/// User `uid`'s ledger rows with what each holds, on the days `[from, to)` (every day
/// when `None`), in order of day, platform and id; rows that hold nothing left out.
pub(super) async fn tallies<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    uid: i64,
    (from, to): (Option<Date>, Option<Date>),
) -> Result<Vec<TallyRow>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.platform, i.external_id, l.day, l.xp, l.xp_messages, l.xp_voice,
                l.xp_games, l.xp_grants, l.messages, l.voice_seconds, l.games_played,
                l.unpaid_afk, l.unpaid_deafened, l.unpaid_muted, l.unpaid_alone
         FROM identities i JOIN xp_ledger l ON l.identity_id = i.id
         WHERE i.user_id = $1 AND ($2::date IS NULL OR l.day >= $2)
           AND ($3::date IS NULL OR l.day < $3)
         ORDER BY l.day, i.platform, i.external_id",
    )
    .bind(uid)
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(TallyRow::from)
        .filter(|r| !r.3.is_empty())
        .collect())
}

impl Store {
    /// User `uid`'s statement for `period` as of `today` (the season named `season`, or
    /// the current one, for [`Period::Season`]); `None` when there is no such season.
    pub async fn statement(
        &self,
        uid: i64,
        period: Period,
        season: Option<&str>,
        today: Date,
    ) -> Result<Option<Statement>, StoreError> {
        let (period, name, range) = match (period, season) {
            (Period::All, None) => (Period::All, None, None),
            (Period::Season, _) | (_, Some(_)) => {
                let seasons = self.seasons().await?;
                let found = match season {
                    Some(name) => seasons.named(name),
                    None => seasons.at(today),
                };
                let Some(s) = found else { return Ok(None) };
                (
                    Period::Season,
                    Some(s.name.clone()),
                    Some((s.first, s.last + Duration::days(1))),
                )
            }
            (p, None) => (p, None, p.range(today, &Default::default())),
        };
        let bounds = range.map_or((None, None), |(f, t)| (Some(f), Some(t)));
        let rows = tallies(&self.pool, uid, bounds).await?;
        Ok(Some(Statement::of(
            period,
            name,
            range,
            rows.into_iter()
                .map(|(platform, _, day, tally)| (platform, day, tally)),
        )))
    }
}
