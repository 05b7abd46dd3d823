//! What readers see: a unified user's profile, a leaderboard row and the leaderboard
//! periods, as `ttfd user --json` and `ttfd top --json` print them (SPEC 5), the query
//! service sends them to the bots, and the HTTP API serves them; [`text`] renders them
//! for people, the same way on every surface.

pub mod text;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Date, Duration};

use crate::rules::Rank;
use crate::wire::WireIdentity;

/// A unified user as `ttfd user --json` prints it (SPEC 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub uid: i64,
    pub display_name: Option<String>,
    pub xp: i64,
    pub rank: Rank,
    pub peak_rank: u8,
    pub coins: i64,
    pub messages: i64,
    pub voice_seconds: i64,
    pub games_played: i64,
    pub games_won: i64,
    pub identities: Vec<WireIdentity>,
    /// Event time of the user's first and newest event, RFC 3339.
    pub created_at: Option<String>,
    pub last_active: Option<String>,
}

/// The leaderboard period: all time, the current ISO week or the current month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    All,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::All, Period::Week, Period::Month];

    /// The days `[from, to)` of the period containing `today`; `None` for all time.
    pub fn range(self, today: Date) -> Option<(Date, Date)> {
        match self {
            Period::All => None,
            Period::Week => {
                let from =
                    today - Duration::days(i64::from(today.weekday().number_days_from_monday()));
                Some((from, from + Duration::days(7)))
            }
            Period::Month => {
                let from = today.replace_day(1).unwrap_or(today);
                let to = from + Duration::days(i64::from(from.month().length(from.year())));
                Some((from, to))
            }
        }
    }

    /// The name on the wire and the command line: `all`, `week`, `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::All => "all",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The period in words: "all time", "this week", "this month".
    pub fn words(self) -> &'static str {
        match self {
            Period::All => "all time",
            Period::Week => "this week",
            Period::Month => "this month",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A period name that is not `all`, `week` or `month`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown period {0:?}: use all, week or month")]
pub struct UnknownPeriod(pub String);

impl FromStr for Period {
    type Err = UnknownPeriod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Period::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownPeriod(s.to_owned()))
    }
}

/// One row of a leaderboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    pub position: usize,
    pub uid: i64,
    pub display_name: Option<String>,
    /// All time: the user's XP; a period: XP earned in it.
    pub xp: i64,
    /// The user's current rank (all time).
    pub rank: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn weeks_are_iso_weeks_and_months_are_calendar_months() {
        let wed = date!(2026 - 11 - 25);
        assert_eq!(
            Period::Week.range(wed),
            Some((date!(2026 - 11 - 23), date!(2026 - 11 - 30)))
        );
        assert_eq!(
            Period::Month.range(wed),
            Some((date!(2026 - 11 - 01), date!(2026 - 12 - 01)))
        );
        assert_eq!(
            Period::Month.range(date!(2028 - 02 - 10)),
            Some((date!(2028 - 02 - 01), date!(2028 - 03 - 01)))
        );
        assert_eq!(Period::All.range(wed), None);
    }

    #[test]
    fn periods_parse_from_their_names_only() {
        assert_eq!("week".parse(), Ok(Period::Week));
        assert_eq!("Month".parse(), Ok(Period::Month));
        assert_eq!("year".parse::<Period>(), Err(UnknownPeriod("year".into())));
        for p in Period::ALL {
            assert_eq!(p.as_str().parse(), Ok(p));
        }
    }
}
