//! What readers see: a unified user's profile, a leaderboard row and the leaderboard
//! periods, as `ttfd user --json` and `ttfd top --json` print them (SPEC 5), the query
//! service sends them to the bots, and the HTTP API serves them; [`text`] renders them
//! for people, the same way on every surface.

pub mod statement;
pub mod text;

pub use statement::{DayTally, PlatformTally, Statement, Tally, UnpaidVoice};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Date, Duration};

use crate::rules::Rank;
use crate::seasons::Seasons;
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
    /// Where the user stands in each current period (all time, this week, this month),
    /// in that order. Added in v1.1: absent from older services' answers.
    #[serde(default)]
    pub standings: Vec<PeriodStanding>,
    /// Where the user stands, or stood, in every season begun, the newest first (`key`
    /// is `season:<name>`). Added with seasons: absent from older services' answers.
    #[serde(default)]
    pub seasons: Vec<PeriodStanding>,
    /// SPEC 7.3 (added in v1.1): off the public leaderboards and profiles; rank-up
    /// announcements wanted.
    #[serde(default)]
    pub hidden: bool,
    #[serde(default = "yes")]
    pub notify: bool,
}

fn yes() -> bool {
    true
}

/// A preference a member switches from any surface (SPEC 7.3): `/notify`, `/privacy`,
/// the website's toggles, the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pref {
    /// Rank-up announcements on (`true`) or off.
    Notify(bool),
    /// Off the leaderboards and the public profile (`true`), or shown again.
    Hidden(bool),
}

impl Pref {
    /// The `prefs` event's payload that says it.
    pub fn payload(self) -> crate::wire::Payload {
        let (hidden, notify) = match self {
            Pref::Notify(on) => (None, Some(on)),
            Pref::Hidden(on) => (Some(on), None),
        };
        crate::wire::Payload::Prefs { hidden, notify }
    }
}

impl Profile {
    /// A user with `xp` and these accounts and nothing else yet (no activity, no
    /// places): rank, peak rank and coins as `xp` gives them. Made-up profiles: the card
    /// benchmark, tests.
    pub fn with_xp(
        rules: &crate::Rules,
        uid: i64,
        display_name: Option<String>,
        xp: i64,
        identities: Vec<WireIdentity>,
    ) -> Self {
        let index = rules.rank_index(xp);
        Profile {
            uid,
            display_name,
            xp,
            rank: rules.rank(index),
            peak_rank: index,
            coins: rules.coins_for_peak(index),
            messages: 0,
            voice_seconds: 0,
            games_played: 0,
            games_won: 0,
            identities,
            created_at: None,
            last_active: None,
            standings: Vec::new(),
            seasons: Vec::new(),
            hidden: false,
            notify: true,
        }
    }

    /// Whether `identity` is one of this user's.
    pub fn has(&self, identity: &crate::Identity) -> bool {
        self.identities
            .iter()
            .any(|i| i.platform == identity.platform.as_str() && i.user == identity.user.as_str())
    }

    /// Whether a reader who is `viewer` (signed in or asking as that identity; `None`:
    /// anyone) may see this profile: a hidden member (SPEC 7.3) is seen only by
    /// themselves. Moderators' tools and the operator's CLI read past it.
    pub fn shown_to(&self, viewer: Option<&crate::Identity>) -> bool {
        !self.hidden || viewer.is_some_and(|v| self.has(v))
    }
}

/// A rank as a coloured badge: the website's, the rank cards'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankBadge {
    pub name: String,
    pub colour: &'static str,
    pub text: &'static str,
}

/// The colour of a rank: by tier letter for the standard ladder, else by position.
pub fn badge(rules: &crate::Rules, index: u8) -> RankBadge {
    let rank = rules.rank(index);
    const BY_INDEX: [&str; 7] = [
        "#7f8c8d", "#27ae60", "#16a085", "#2980b9", "#8e44ad", "#d35400", "#e0a800",
    ];
    let colour = match rank.tier.as_str() {
        "F" => BY_INDEX[0],
        "E" => BY_INDEX[1],
        "D" => BY_INDEX[2],
        "C" => BY_INDEX[3],
        "B" => BY_INDEX[4],
        "A" => BY_INDEX[5],
        "S" => BY_INDEX[6],
        _ => {
            let n = rules.ranks.len().max(1);
            BY_INDEX[(usize::from(rank.index) - 1) * BY_INDEX.len() / n]
        }
    };
    // Dark text on the light gold, white elsewhere.
    let text = if colour == BY_INDEX[6] {
        "#1b1b1b"
    } else {
        "#ffffff"
    };
    RankBadge {
        name: rank.name,
        colour,
        text,
    }
}

/// A user's place in one period's leaderboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodStanding {
    pub period: Period,
    /// The period's standings key (`all`, `week:2026-W49`, `month:2026-12`).
    pub key: String,
    /// 1-based; `None` when the user is not ranked in it (no XP in the period).
    pub position: Option<u64>,
    /// XP in the period (all time: the user's XP).
    pub xp: i64,
    /// How many members the period ranks.
    pub ranked: u64,
}

/// The leaderboard period: all time, the current ISO week, the current month (UTC) or
/// the current season (`crate::seasons`; there may be none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    All,
    Week,
    Month,
    Season,
}

impl Period {
    /// The periods every day is in, whatever the seasons.
    pub const ALL: [Period; 3] = [Period::All, Period::Week, Period::Month];
    /// Every period, as the surfaces offer them.
    pub const EVERY: [Period; 4] = [Period::All, Period::Week, Period::Month, Period::Season];

    /// The days `[from, to)` of the period containing `today`; `None` for all time and
    /// for a day in no season.
    pub fn range(self, today: Date, seasons: &Seasons) -> Option<(Date, Date)> {
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
            Period::Season => seasons
                .at(today)
                .map(|s| (s.first, s.last + Duration::days(1))),
        }
    }

    /// The key of this period's standings containing `day`: `all`, `week:2026-W49` (ISO
    /// week, UTC), `month:2026-12`, `season:<name>`; `None` for a day in no season. A
    /// new period simply has a new key: nothing rolls over at midnight, and past periods
    /// keep theirs.
    pub fn key(self, day: Date, seasons: &Seasons) -> Option<String> {
        Some(match self {
            Period::All => "all".to_owned(),
            Period::Week => {
                let (year, week, _) = day.to_iso_week_date();
                format!("week:{year:04}-W{week:02}")
            }
            Period::Month => format!("month:{:04}-{:02}", day.year(), u8::from(day.month())),
            Period::Season => seasons.at(day)?.key(),
        })
    }

    /// The name on the wire and the command line: `all`, `week`, `month`, `season`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::All => "all",
            Period::Week => "week",
            Period::Month => "month",
            Period::Season => "season",
        }
    }

    /// The period in words: "all time", "this week", "this month", "this season".
    pub fn words(self) -> &'static str {
        match self {
            Period::All => "all time",
            Period::Week => "this week",
            Period::Month => "this month",
            Period::Season => "this season",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A period name that is not `all`, `week`, `month` or `season`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown period {0:?}: use all, week, month or season")]
pub struct UnknownPeriod(pub String);

impl FromStr for Period {
    type Err = UnknownPeriod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Period::EVERY
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownPeriod(s.to_owned()))
    }
}

/// A season as `ttfd seasons --json` prints it, `GET /api/v1/seasons` serves it and the
/// website's hall of champions shows it (docs/seasons.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeasonView {
    pub name: String,
    /// First and last day, `YYYY-MM-DD` (UTC, both included).
    pub from: String,
    pub to: String,
    /// `upcoming`, `on`, `over` (its last day is past, its closing not yet made) or
    /// `closed`.
    pub status: String,
    /// Its standings key, `season:<name>`.
    pub key: String,
    /// Members it ranks (closed: when it closed).
    pub ranked: i64,
    /// When it closed, RFC 3339.
    pub closed_at: Option<String>,
    /// A closed season's champions, position 1 first (members hidden now are left out).
    pub champions: Vec<Standing>,
}

/// One entry of the audit log (SPEC 7.1): an `xp` event, or a link an operator made,
/// as `ttfd audit --json` prints it and `GET /api/v1/audit` serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub event_id: String,
    /// Event time, Unix ms, and the same as RFC 3339.
    pub ts: i64,
    pub at: String,
    /// `xp` or `link`.
    pub kind: String,
    /// The identity the change was about.
    pub member: WireIdentity,
    /// A link's other identity.
    pub other: Option<WireIdentity>,
    /// An `xp` event's amount and reason.
    pub amount: Option<i32>,
    pub reason: Option<String>,
    /// Who made the change, when the event said (`data.by`).
    pub by: Option<WireIdentity>,
}

/// Event time `ms` (Unix ms) as RFC 3339, UTC; `None` outside what a date can hold.
pub fn rfc3339(ms: i64) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(&Rfc3339).ok()
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
        let none = Seasons::default();
        let wed = date!(2026 - 11 - 25);
        assert_eq!(
            Period::Week.range(wed, &none),
            Some((date!(2026 - 11 - 23), date!(2026 - 11 - 30)))
        );
        assert_eq!(
            Period::Month.range(wed, &none),
            Some((date!(2026 - 11 - 01), date!(2026 - 12 - 01)))
        );
        assert_eq!(
            Period::Month.range(date!(2028 - 02 - 10), &none),
            Some((date!(2028 - 02 - 01), date!(2028 - 03 - 01)))
        );
        assert_eq!(Period::All.range(wed, &none), None);
    }

    #[test]
    fn a_period_key_names_the_iso_week_or_calendar_month_of_the_day() {
        let none = Seasons::default();
        // 2027-01-01 is a Friday of ISO week 2026-W53.
        let day = date!(2027 - 01 - 01);
        assert_eq!(
            Period::Week.key(day, &none).expect("a key"),
            "week:2026-W53"
        );
        assert_eq!(
            Period::Month.key(day, &none).expect("a key"),
            "month:2027-01"
        );
        assert_eq!(Period::All.key(day, &none).expect("a key"), "all");
        assert_eq!(
            Period::Week
                .key(date!(2026 - 12 - 07), &none)
                .expect("a key"),
            "week:2026-W50"
        );
        // Every day of a week has its key; the next Monday starts a new one.
        let (from, to) = Period::Week
            .range(date!(2026 - 12 - 03), &none)
            .expect("a week");
        let mut d = from;
        while d < to {
            assert_eq!(Period::Week.key(d, &none).expect("a key"), "week:2026-W49");
            d = d.next_day().expect("a next day");
        }
        assert_eq!(Period::Week.key(to, &none).expect("a key"), "week:2026-W50");
        // A season's key is its name's; a day in none has no season key.
        let seasons = Seasons::new(vec![
            crate::seasons::Season::parse("winter", "2026-12-01", "2027-02-28").expect("a season"),
        ])
        .expect("valid");
        assert_eq!(
            Period::Season.key(day, &seasons),
            Some("season:winter".into())
        );
        assert_eq!(Period::Season.key(date!(2027 - 03 - 01), &seasons), None);
        assert_eq!(
            Period::Season.range(day, &seasons),
            Some((date!(2026 - 12 - 01), date!(2027 - 03 - 01)))
        );
    }

    #[test]
    fn periods_parse_from_their_names_only() {
        assert_eq!("week".parse(), Ok(Period::Week));
        assert_eq!("Month".parse(), Ok(Period::Month));
        assert_eq!("year".parse::<Period>(), Err(UnknownPeriod("year".into())));
        assert_eq!(" season".parse(), Ok(Period::Season));
        for p in Period::EVERY {
            assert_eq!(p.as_str().parse(), Ok(p));
        }
    }
}
