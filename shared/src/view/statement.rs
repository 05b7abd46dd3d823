//! The XP statement (docs/rules.md, "The XP statement"): where a member's XP of a period
//! came from, by source, by platform and by day, and the voice time that paid nothing
//! with the reason the platform gave. One shape behind the profile page, `/rank
//! details` on both bots, the API and `ttfd statement`.

use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

use super::Period;
use crate::wire::Unpaid;

/// Seconds of voice time that paid nothing, per reason (`voice_unpaid` events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpaidVoice {
    pub afk: i64,
    pub deafened: i64,
    pub muted: i64,
    pub alone: i64,
}

impl UnpaidVoice {
    pub fn get(&self, why: Unpaid) -> i64 {
        match why {
            Unpaid::Afk => self.afk,
            Unpaid::Deafened => self.deafened,
            Unpaid::Muted => self.muted,
            Unpaid::Alone => self.alone,
        }
    }

    pub fn add(&mut self, why: Unpaid, seconds: i64) {
        let slot = match why {
            Unpaid::Afk => &mut self.afk,
            Unpaid::Deafened => &mut self.deafened,
            Unpaid::Muted => &mut self.muted,
            Unpaid::Alone => &mut self.alone,
        };
        *slot += seconds;
    }

    pub fn total(&self) -> i64 {
        Unpaid::ALL.into_iter().map(|w| self.get(w)).sum()
    }
}

/// What some days of a member's XP are made of. `xp` is the ledger's total; the four
/// sources add up to it, except on days applied before statements were kept
/// ([`Tally::unitemised`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub xp: i64,
    /// The paying minutes of messages (SPEC 3, 7.2).
    pub messages_xp: i64,
    pub voice_xp: i64,
    pub games_xp: i64,
    /// `xp` events: moderators' changes and season rewards (may be negative).
    pub grants_xp: i64,
    pub messages: i64,
    /// Seconds of `voice` events, whatever they paid.
    pub voice_seconds: i64,
    pub games_played: i64,
    pub unpaid_voice: UnpaidVoice,
}

impl Tally {
    /// XP of days applied before statements were kept, whose sources are not known
    /// (`ttfd rebuild` itemises them from the stream).
    pub fn unitemised(&self) -> i64 {
        self.xp - self.messages_xp - self.voice_xp - self.games_xp - self.grants_xp
    }

    /// Whether it holds nothing to show.
    pub fn is_empty(&self) -> bool {
        *self == Tally::default()
    }
}

impl AddAssign<&Tally> for Tally {
    fn add_assign(&mut self, o: &Tally) {
        self.xp += o.xp;
        self.messages_xp += o.messages_xp;
        self.voice_xp += o.voice_xp;
        self.games_xp += o.games_xp;
        self.grants_xp += o.grants_xp;
        self.messages += o.messages;
        self.voice_seconds += o.voice_seconds;
        self.games_played += o.games_played;
        for why in Unpaid::ALL {
            self.unpaid_voice.add(why, o.unpaid_voice.get(why));
        }
    }
}

/// A platform's share of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformTally {
    pub platform: String,
    #[serde(flatten)]
    pub tally: Tally,
}

/// A day's share of a statement (UTC, `YYYY-MM-DD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayTally {
    pub day: String,
    #[serde(flatten)]
    pub tally: Tally,
}

/// A member's XP statement for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub period: Period,
    /// The season's name, for a season.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub season: Option<String>,
    /// First and last day (UTC, inclusive); absent for all time.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub to: Option<String>,
    pub total: Tally,
    /// Each platform with something to show, by name.
    pub platforms: Vec<PlatformTally>,
    /// Each day with something to show, oldest first.
    pub days: Vec<DayTally>,
}

impl Statement {
    /// The statement of `rows` (platform, day, tally; any order, repeats summed).
    pub fn of(
        period: Period,
        season: Option<String>,
        range: Option<(time::Date, time::Date)>,
        rows: impl IntoIterator<Item = (String, time::Date, Tally)>,
    ) -> Self {
        use std::collections::BTreeMap;
        let mut platforms: BTreeMap<String, Tally> = BTreeMap::new();
        let mut days: BTreeMap<time::Date, Tally> = BTreeMap::new();
        let mut total = Tally::default();
        for (platform, day, tally) in rows {
            *platforms.entry(platform).or_default() += &tally;
            *days.entry(day).or_default() += &tally;
            total += &tally;
        }
        Statement {
            period,
            season,
            from: range.map(|(from, _)| from.to_string()),
            to: range.map(|(_, to)| (to - time::Duration::days(1)).to_string()),
            total,
            platforms: platforms
                .into_iter()
                .filter(|(_, t)| !t.is_empty())
                .map(|(platform, tally)| PlatformTally { platform, tally })
                .collect(),
            days: days
                .into_iter()
                .filter(|(_, t)| !t.is_empty())
                .map(|(day, tally)| DayTally {
                    day: day.to_string(),
                    tally,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn tally(messages_xp: i64, voice_xp: i64, muted: i64) -> Tally {
        Tally {
            xp: messages_xp + voice_xp,
            messages_xp,
            voice_xp,
            messages: messages_xp / 10,
            voice_seconds: voice_xp * 15,
            unpaid_voice: UnpaidVoice {
                muted,
                ..UnpaidVoice::default()
            },
            ..Tally::default()
        }
    }

    #[test]
    fn a_statement_sums_rows_by_platform_and_by_day() {
        let d1 = date!(2026 - 12 - 07);
        let d2 = date!(2026 - 12 - 08);
        let s = Statement::of(
            Period::Week,
            None,
            Some((d1, date!(2026 - 12 - 14))),
            [
                ("telegram".to_owned(), d2, tally(20, 0, 0)),
                ("discord".to_owned(), d1, tally(10, 4, 120)),
                ("discord".to_owned(), d2, tally(0, 8, 0)),
                // A day that holds nothing (preferences only) is left out.
                (
                    "discord".to_owned(),
                    date!(2026 - 12 - 09),
                    Tally::default(),
                ),
            ],
        );
        assert_eq!(s.from.as_deref(), Some("2026-12-07"));
        assert_eq!(s.to.as_deref(), Some("2026-12-13"));
        assert_eq!(s.total.xp, 42);
        assert_eq!(s.total.unpaid_voice.muted, 120);
        assert_eq!(s.total.unitemised(), 0);
        let platforms: Vec<(&str, i64)> = s
            .platforms
            .iter()
            .map(|p| (p.platform.as_str(), p.tally.xp))
            .collect();
        assert_eq!(platforms, [("discord", 22), ("telegram", 20)]);
        let days: Vec<(&str, i64, i64)> = s
            .days
            .iter()
            .map(|d| (d.day.as_str(), d.tally.messages_xp, d.tally.voice_xp))
            .collect();
        assert_eq!(days, [("2026-12-07", 10, 4), ("2026-12-08", 20, 8)]);
    }

    #[test]
    fn xp_whose_sources_are_unknown_is_shown_as_unitemised() {
        let t = Tally {
            xp: 100,
            voice_xp: 30,
            ..Tally::default()
        };
        assert_eq!(t.unitemised(), 70);
    }
}
