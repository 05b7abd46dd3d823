//! Seasons in the database (docs/seasons.md): the list in force, which every standings
//! refresher counts, and each season's closing with its champions.

use std::collections::HashMap;

use sqlx::PgConnection;
use time::{Date, OffsetDateTime};
use ttfd_shared::seasons::{Season, Seasons};
use ttfd_shared::trust::SEASON_REWARD_PREFIX;
use ttfd_shared::view::text::closing_words;
use ttfd_shared::view::{Period, PeriodStanding, SeasonView};
use ttfd_shared::wire::{EventId, SeasonChampion, SeasonNotice, WireIdentity};
use ttfd_shared::{Event, Identity, Payload};

use super::standings::{REFRESH_LOCK_CLASS, period_of};
use super::{Store, StoreError};

/// A closed season's champion, as the standings had them at the closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Champion {
    pub position: u32,
    /// The user now (a champion merged since is followed to the survivor).
    pub uid: i64,
    pub xp: i64,
}

/// A season that was closed, with its champions; or a week or a month, when
/// [`ClosingRules`] close them too: then `season` holds the standings key as its name
/// (`week:2026-W49`, `month:2026-12`, never a season's name) and its days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub period: Period,
    pub season: Season,
    pub closed_at: OffsetDateTime,
    pub ranked: i64,
    pub champions: Vec<Champion>,
}

/// How many champions a closing names, and the XP each position receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Champions {
    pub top: u32,
    /// `rewards[p - 1]` XP for position `p` (none past its end).
    pub rewards: Vec<i32>,
}

/// What closes: every season, and each week and month when asked (docs/seasons.md,
/// "Weeks and months").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosingRules {
    pub season: Champions,
    pub week: Option<Champions>,
    pub month: Option<Champions>,
}

impl ClosingRules {
    /// Seasons close with `top` champions and `rewards`; weeks and months do not.
    pub fn seasons_only(top: u32, rewards: &[i32]) -> Self {
        Self {
            season: Champions {
                top,
                rewards: rewards.to_vec(),
            },
            week: None,
            month: None,
        }
    }

    fn of(&self, period: Period) -> Option<&Champions> {
        match period {
            Period::Season => Some(&self.season),
            Period::Week => self.week.as_ref(),
            Period::Month => self.month.as_ref(),
            Period::All => None,
        }
    }
}

/// The week or month (`period`) containing `day`, as a closing's [`Season`]: its
/// standings key as the name, and its days.
fn rolling(period: Period, day: Date) -> Option<Season> {
    let (first, to) = period.range(day, &Seasons::default())?;
    Some(Season {
        name: period.key(day, &Seasons::default())?,
        first,
        last: to - time::Duration::days(1),
    })
}

/// The first day of the week or month whose standings key is `key`.
fn first_day_of(key: &str) -> Option<Date> {
    if let Some(week) = key.strip_prefix("week:") {
        let (year, week) = week.split_once("-W")?;
        Date::from_iso_week_date(
            year.parse().ok()?,
            week.parse().ok()?,
            time::Weekday::Monday,
        )
        .ok()
    } else {
        let (year, month) = key.strip_prefix("month:")?.split_once('-')?;
        let month = time::Month::try_from(month.parse::<u8>().ok()?).ok()?;
        Date::from_calendar_date(year.parse().ok()?, month, 1).ok()
    }
}

/// The reward events of a closing (see [`Store::close_seasons`]).
fn rewards_of(
    notice: &SeasonNotice,
    period: Period,
    season: &Season,
    rewards: &[i32],
) -> Vec<Event> {
    let end_ms = (season.last + time::Duration::days(1))
        .midnight()
        .assume_utc()
        .unix_timestamp()
        * 1000
        - 1;
    notice
        .champions
        .iter()
        .filter_map(|c| {
            let amount = *rewards.get(usize::try_from(c.position).ok()? - 1)?;
            let first = c.identities.first()?;
            let identity = Identity::new(&first.platform, &first.user).ok()?;
            let id = format!("{SEASON_REWARD_PREFIX}{}:{}", season.name, c.position);
            if amount == 0 {
                return None;
            }
            Some(Event {
                id: EventId::parse(&id).ok()?,
                ts: end_ms,
                identity,
                name: None,
                payload: Payload::Xp {
                    amount,
                    reason: format!("{} #{}", closing_words(period, &season.name), c.position)
                        .chars()
                        .take(64)
                        .collect(),
                    by: None,
                },
            })
        })
        .collect()
}

/// `champions` with their names and identities now.
async fn champion_views(
    conn: &mut PgConnection,
    champions: &[Champion],
) -> Result<Vec<SeasonChampion>, StoreError> {
    /// A user, their name, and their identities' platforms and ids.
    type About = (i64, Option<String>, Vec<String>, Vec<String>);
    let uids: Vec<i64> = champions.iter().map(|c| c.uid).collect();
    let about: Vec<About> = sqlx::query_as(
        "SELECT u.id,
                (SELECT n.name FROM identities i JOIN identity_names n ON n.identity_id = i.id
                 WHERE i.user_id = u.id ORDER BY n.name_ms DESC, n.name_event DESC LIMIT 1),
                ARRAY(SELECT platform FROM identities WHERE user_id = u.id ORDER BY id),
                ARRAY(SELECT external_id FROM identities WHERE user_id = u.id ORDER BY id)
         FROM users u WHERE u.id = ANY($1)",
    )
    .bind(&uids)
    .fetch_all(&mut *conn)
    .await?;
    let about: HashMap<i64, (Option<String>, Vec<WireIdentity>)> = about
        .into_iter()
        .map(|(uid, name, platforms, users)| {
            let ids = platforms
                .into_iter()
                .zip(users)
                .map(|(platform, user)| WireIdentity { platform, user })
                .collect();
            (uid, (name, ids))
        })
        .collect();
    Ok(champions
        .iter()
        .map(|c| {
            let (display_name, identities) = about.get(&c.uid).cloned().unwrap_or_default();
            SeasonChampion {
                position: c.position,
                uid: c.uid,
                xp: c.xp,
                display_name,
                identities,
            }
        })
        .collect())
}

/// The champions of `season`, followed to their users now (erased ones left out).
async fn champions_in(
    conn: &mut PgConnection,
    season: Option<&str>,
) -> Result<Vec<(String, Champion)>, StoreError> {
    let rows: Vec<(String, i32, i64, i64)> = sqlx::query_as(
        "WITH RECURSIVE chain AS (
             SELECT h.season, h.position, h.xp, u.id, u.merged_into, 0 AS depth
             FROM season_champions h JOIN users u ON u.id = h.user_id
             WHERE $1::text IS NULL OR h.season = $1
             UNION ALL
             SELECT c.season, c.position, c.xp, u.id, u.merged_into, c.depth + 1
             FROM chain c JOIN users u ON u.id = c.merged_into WHERE c.depth < 64)
         SELECT season, position, id, xp FROM chain WHERE merged_into IS NULL
         ORDER BY season, position",
    )
    .bind(season)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(season, position, uid, xp)| {
            let champion = Champion {
                position: position.unsigned_abs(),
                uid,
                xp,
            };
            (season, champion)
        })
        .collect())
}

/// The notice of `closing`, which follows the closing of `previous` (if any).
async fn season_notice(
    conn: &mut PgConnection,
    closing: &Closing,
    previous: Option<&str>,
) -> Result<SeasonNotice, StoreError> {
    let before: Vec<Champion> = match previous {
        Some(p) => champions_in(conn, Some(p))
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect(),
        None => Vec::new(),
    };
    let season = &closing.season;
    Ok(SeasonNotice {
        v: 1,
        period: closing.period,
        id: format!("season:{}", season.name),
        ts: i64::try_from(closing.closed_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        season: season.name.clone(),
        from: season.first.to_string(),
        to: season.last.to_string(),
        ranked: closing.ranked,
        champions: champion_views(conn, &closing.champions).await?,
        previous: champion_views(conn, &before).await?,
    })
}

/// The seasons of the `seasons` table, in the caller's transaction.
pub(crate) async fn seasons_in(conn: &mut PgConnection) -> Result<Seasons, StoreError> {
    let rows: Vec<(String, Date, Date)> =
        sqlx::query_as("SELECT name, first_day, last_day FROM seasons ORDER BY first_day")
            .fetch_all(&mut *conn)
            .await?;
    Seasons::new(
        rows.into_iter()
            .map(|(name, first, last)| Season { name, first, last })
            .collect(),
    )
    .map_err(|e| StoreError::Schema(format!("table seasons: {e}")))
}

impl Store {
    /// The seasons in force.
    pub async fn seasons(&self) -> Result<Seasons, StoreError> {
        let mut conn = self.pool.acquire().await?;
        seasons_in(&mut conn).await
    }

    /// Makes `seasons` the seasons in force. When they differ from the stored ones, they
    /// are written, under the standings refresh lock, with a request to recompute every
    /// standing (a season added or moved counts days already past); `true` then.
    pub async fn configure_seasons(&self, seasons: &Seasons) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))")
            .bind(REFRESH_LOCK_CLASS)
            .execute(&mut *tx)
            .await?;
        if &seasons_in(&mut tx).await? == seasons {
            return Ok(false);
        }
        sqlx::query("DELETE FROM seasons").execute(&mut *tx).await?;
        let (names, firsts, lasts): (Vec<&str>, Vec<Date>, Vec<Date>) = seasons
            .iter()
            .map(|s| (s.name.as_str(), s.first, s.last))
            .collect();
        sqlx::query(
            "INSERT INTO seasons (name, first_day, last_day)
             SELECT * FROM unnest($1::text[], $2::date[], $3::date[])",
        )
        .bind(&names)
        .bind(&firsts)
        .bind(&lasts)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO standing_work (recompute) VALUES (true)")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The spans over by `today` that `rules` close: every season; each week (month)
    /// after the newest one closed, or, before any was, the last one.
    async fn due(
        &self,
        today: Date,
        rules: &ClosingRules,
    ) -> Result<Vec<(Period, Season)>, StoreError> {
        let mut due: Vec<(Period, Season)> = self
            .seasons()
            .await?
            .iter()
            .filter(|s| s.over(today))
            .map(|s| (Period::Season, s.clone()))
            .collect();
        for period in [Period::Week, Period::Month] {
            if rules.of(period).is_none() {
                continue;
            }
            let Some(current) = rolling(period, today) else {
                continue;
            };
            let last = current.first - time::Duration::days(1);
            let newest: Option<String> = sqlx::query_scalar(
                "SELECT season FROM season_closings WHERE season LIKE $1
                 ORDER BY season DESC LIMIT 1",
            )
            .bind(format!("{}:%", period.as_str()))
            .fetch_optional(&self.pool)
            .await?;
            let mut day = match newest
                .as_deref()
                .and_then(first_day_of)
                .and_then(|d| rolling(period, d))
            {
                Some(closed) => closed.last + time::Duration::days(1),
                None => rolling(period, last).map_or(last, |s| s.first),
            };
            while day <= last {
                let Some(span) = rolling(period, day) else {
                    break;
                };
                day = span.last + time::Duration::days(1);
                due.push((period, span));
            }
        }
        Ok(due)
    }

    /// Closes what `rules` close and is over by `now` less `grace` (late events still
    /// count in the grace) but not closed yet (see [`Store::due`]): each in one
    /// transaction that takes the top `top` of its committed standings (every committed
    /// batch's work applied first), records the closing and queues its [`SeasonNotice`]
    /// in the outbox, with the champions' rewards: `rewards[p - 1]` XP for position `p`,
    /// an `xp` event with the id `season:<name>:<p>` (`season:week:2026-W49:1`) at the
    /// span's last millisecond, to the champion's first identity. A second caller, at
    /// the same time on another replica or later, finds it closed and does nothing.
    /// Returns the closings made by this call.
    pub async fn close_seasons(
        &self,
        now: OffsetDateTime,
        grace: time::Duration,
        rules: &ClosingRules,
    ) -> Result<Vec<Closing>, StoreError> {
        let today = (now - grace).date();
        let mut closed = Vec::new();
        for (period, season) in self.due(today, rules).await? {
            let Some(Champions { top, rewards }) = rules.of(period) else {
                continue;
            };
            let mut tx = self.pool.begin().await?;
            // The refresh lock: the standings are read with every committed batch's work
            // applied, and no other closer runs meanwhile.
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))")
                .bind(REFRESH_LOCK_CLASS)
                .execute(&mut *tx)
                .await?;
            let done: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM season_closings WHERE season = $1)",
            )
            .bind(&season.name)
            .fetch_one(&mut *tx)
            .await?;
            if done {
                continue;
            }
            super::standings::refresh_all_in(&mut tx, self.block_target).await?;
            let key = match period {
                Period::Season => season.key(),
                _ => season.name.clone(),
            };
            let rows: Vec<(i64, i64)> = sqlx::query_as(&format!(
                "SELECT user_id, xp FROM standings WHERE period = {} AND NOT hidden
                 ORDER BY -xp, user_id LIMIT $2",
                period_of("$1")
            ))
            .bind(&key)
            .bind(i64::from(*top))
            .fetch_all(&mut *tx)
            .await?;
            let ranked: i64 = sqlx::query_scalar(&format!(
                "SELECT coalesce(sum(members), 0)::int8 FROM standing_blocks WHERE period = {}",
                period_of("$1")
            ))
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
            let closed_at: OffsetDateTime = sqlx::query_scalar(
                "INSERT INTO season_closings (season, ranked) VALUES ($1, $2) RETURNING closed_at",
            )
            .bind(&season.name)
            .bind(ranked)
            .fetch_one(&mut *tx)
            .await?;
            let champions: Vec<Champion> = rows
                .into_iter()
                .zip(1..)
                .map(|((uid, xp), position)| Champion { position, uid, xp })
                .collect();
            sqlx::query(
                "INSERT INTO season_champions (season, position, user_id, xp)
                 SELECT $1, * FROM unnest($2::int4[], $3::int8[], $4::int8[])",
            )
            .bind(&season.name)
            .bind(
                champions
                    .iter()
                    .map(|c| c.position as i32)
                    .collect::<Vec<_>>(),
            )
            .bind(champions.iter().map(|c| c.uid).collect::<Vec<_>>())
            .bind(champions.iter().map(|c| c.xp).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            let closing = Closing {
                period,
                season,
                closed_at,
                ranked,
                champions,
            };
            // The closing before it of the same kind: a winner role moves from its
            // champions.
            let previous: Option<String> = sqlx::query_scalar(
                "SELECT season FROM season_closings
                 WHERE season <> $1 AND (CASE WHEN $2 = 'season' THEN season NOT LIKE '%:%'
                                              ELSE season LIKE $2 || ':%' END)
                 ORDER BY closed_at DESC, season DESC LIMIT 1",
            )
            .bind(&closing.season.name)
            .bind(period.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let notice = season_notice(&mut tx, &closing, previous.as_deref()).await?;
            for event in rewards_of(&notice, period, &closing.season, rewards) {
                super::codes::enqueue(&mut tx, &event).await?;
            }
            sqlx::query("INSERT INTO outbox (topic, body) VALUES ('season', $1)")
                .bind(serde_json::to_value(&notice)?)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            closed.push(closing);
        }
        Ok(closed)
    }

    /// Every closed season (not week or month), newest first, with its champions (followed to their users
    /// now; a champion erased since is left out).
    pub async fn closings(&self) -> Result<Vec<Closing>, StoreError> {
        let seasons = self.seasons().await?;
        let closed: Vec<(String, OffsetDateTime, i64)> = sqlx::query_as(
            "SELECT season, closed_at, ranked FROM season_closings WHERE season NOT LIKE '%:%'
             ORDER BY closed_at DESC, season",
        )
        .fetch_all(&self.pool)
        .await?;
        let champions = {
            let mut conn = self.pool.acquire().await?;
            champions_in(&mut conn, None).await?
        };
        Ok(closed
            .into_iter()
            .map(|(name, closed_at, ranked)| {
                let champions = champions
                    .iter()
                    .filter(|(s, _)| *s == name)
                    .map(|(_, c)| c.clone())
                    .collect();
                // A season closed and then taken out of the settings keeps its name.
                let season = seasons.named(&name).cloned().unwrap_or(Season {
                    name,
                    first: closed_at.date(),
                    last: closed_at.date(),
                });
                Closing {
                    period: Period::Season,
                    season,
                    closed_at,
                    ranked,
                    champions,
                }
            })
            .collect())
    }
}

/// A leaderboard a reader asks for: a period around a day, or a season by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    pub period: Period,
    /// Its standings key.
    pub key: String,
    /// The season, for a season's board.
    pub season: Option<Season>,
}

impl Board {
    /// What it ranks, in words: "all time", "this week", "in season winter-2026".
    pub fn words(&self) -> String {
        match &self.season {
            Some(s) => format!("in season {}", s.name),
            None => self.period.words().to_owned(),
        }
    }
}

impl Store {
    /// The board of `season` when named (past, current or to come), else of `period`
    /// around `today`; `None` when there is no such season, or no season on `today`.
    pub async fn board(
        &self,
        period: Period,
        season: Option<&str>,
        today: Date,
    ) -> Result<Option<Board>, StoreError> {
        let seasons = self.seasons().await?;
        let season = match season {
            Some(name) => seasons.named(name),
            None if period == Period::Season => seasons.at(today),
            None => {
                return Ok(period.key(today, &seasons).map(|key| Board {
                    period,
                    key,
                    season: None,
                }));
            }
        };
        Ok(season.map(|s| Board {
            period: Period::Season,
            key: s.key(),
            season: Some(s.clone()),
        }))
    }
}

impl Store {
    /// Where `uid` stands in each current period around `today` (as
    /// [`Store::standings_of`]) and, or stood, in every season begun by then, the newest
    /// first: one read of the seasons, one statement for all the places.
    pub async fn places(
        &self,
        uid: i64,
        today: Date,
    ) -> Result<(Vec<PeriodStanding>, Vec<PeriodStanding>), StoreError> {
        let seasons = self.seasons().await?;
        let mut periods: Vec<(Period, String)> = Period::EVERY
            .into_iter()
            .filter_map(|p| Some((p, p.key(today, &seasons)?)))
            .collect();
        let current = periods.len();
        periods.extend(
            seasons
                .iter()
                .rev()
                .filter(|s| s.first <= today)
                .map(|s| (Period::Season, s.key())),
        );
        let mut all = self.positions(uid, periods).await?;
        let history = all.split_off(current);
        Ok((all, history))
    }

    /// Every season, the newest first, as readers see it on `today`: its status, how many
    /// members it ranks, and a closed season's champions (members hidden now left out).
    pub async fn season_views(&self, today: Date) -> Result<Vec<SeasonView>, StoreError> {
        let seasons = self.seasons().await?;
        let closings = self.closings().await?;
        let hidden = {
            let mut conn = self.pool.acquire().await?;
            super::standings::hidden_users(&mut conn).await?
        };
        let mut views = Vec::new();
        for s in seasons.iter().rev() {
            let closing = closings.iter().find(|c| c.season.name == s.name);
            let (status, ranked, closed_at, champions) = match closing {
                Some(c) => {
                    let rows = c
                        .champions
                        .iter()
                        .filter(|h| !hidden.contains(&h.uid))
                        .map(|h| (h.uid, h.xp))
                        .collect();
                    let mut champions = self.standing_rows(rows, 0).await?;
                    // Their positions as they closed, gaps where a hidden one was.
                    for (row, h) in champions
                        .iter_mut()
                        .zip(c.champions.iter().filter(|h| !hidden.contains(&h.uid)))
                    {
                        row.position = h.position as usize;
                    }
                    let at = c
                        .closed_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .ok();
                    ("closed", c.ranked, at, champions)
                }
                None => {
                    let status = if s.first > today {
                        "upcoming"
                    } else if s.over(today) {
                        "over"
                    } else {
                        "on"
                    };
                    (status, self.ranked(&s.key()).await?, None, Vec::new())
                }
            };
            views.push(SeasonView {
                name: s.name.clone(),
                from: s.first.to_string(),
                to: s.last.to_string(),
                status: status.to_owned(),
                key: s.key(),
                ranked,
                closed_at,
                champions,
            });
        }
        Ok(views)
    }
}
