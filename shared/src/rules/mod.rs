//! The XP, rank and coin rules of SPEC section 3, with every number configurable.
//!
//! Read by every role from the `rules` config section; the defaults are the spec's.

mod ranks;

pub use ranks::{Rank, RankDef, default_ladder};

use serde::{Deserialize, Serialize};

use crate::wire::Payload;

/// Milliseconds in a minute and a day: the message bucket and the ledger day.
pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;

/// The numbers behind XP and ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// XP for the first eligible message of an identity in a UTC minute.
    pub message_xp: i64,
    /// A message with a `len` below this earns no XP (it still counts as a message).
    pub min_message_len: u64,
    /// Voice XP per minute, paid as `seconds * voice_xp_per_minute / 60`.
    pub voice_xp_per_minute: i64,
    /// The rank ladder, lowest first; the first rank must require 0 XP.
    pub ranks: Vec<RankDef>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            message_xp: 10,
            min_message_len: 5,
            voice_xp_per_minute: 4,
            ranks: default_ladder(),
        }
    }
}

/// A rule set that cannot be used, with the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rules.{key}: {message}")]
pub struct RulesError {
    pub key: &'static str,
    pub message: String,
}

impl Rules {
    /// Checks what the rest of the code relies on: a non-empty ladder starting at 0,
    /// strictly increasing, with at most 255 ranks.
    pub fn validate(&self) -> Result<(), RulesError> {
        let err = |key, message: &str| {
            Err(RulesError {
                key,
                message: message.to_owned(),
            })
        };
        if self.message_xp < 0 || self.voice_xp_per_minute < 0 {
            return err(
                "message_xp",
                "XP per message and per voice minute must be >= 0",
            );
        }
        match self.ranks.first() {
            None => return err("ranks", "the ladder needs at least one rank"),
            Some(first) if first.xp != 0 => {
                return err("ranks", "the first rank must require 0 XP");
            }
            Some(_) => {}
        }
        if self.ranks.len() > 255 {
            return err("ranks", "at most 255 ranks");
        }
        if self.ranks.windows(2).any(|w| w[0].xp >= w[1].xp) {
            return err(
                "ranks",
                "required XP must increase strictly from rank to rank",
            );
        }
        if self.ranks.iter().any(|r| r.coins < 0 || r.name.is_empty()) {
            return err("ranks", "every rank needs a name and coins >= 0");
        }
        Ok(())
    }

    /// The rank index (1-based) for an XP total: the highest rank whose required XP is
    /// `<= xp`. A negative total (possible after admin adjustments) stays at rank 1.
    pub fn rank_index(&self, xp: i64) -> u8 {
        let reached = self.ranks.partition_point(|r| r.xp <= xp);
        u8::try_from(reached.max(1)).unwrap_or(u8::MAX)
    }

    /// The full description of rank `index` (1-based), clamped to the ladder.
    pub fn rank(&self, index: u8) -> Rank {
        let i = usize::from(index.max(1)).min(self.ranks.len()) - 1;
        let def = &self.ranks[i];
        Rank {
            index: u8::try_from(i + 1).unwrap_or(u8::MAX),
            name: def.name.clone(),
            tier: def.tier().to_owned(),
            stars: def.stars(),
            required_xp: def.xp,
            next_xp: self.ranks.get(i + 1).map(|n| n.xp),
        }
    }

    /// Coins from rank rewards: every rank from 2 up to the peak pays once.
    pub fn coins_for_peak(&self, peak_rank: u8) -> i64 {
        self.ranks
            .iter()
            .take(usize::from(peak_rank))
            .skip(1)
            .map(|r| r.coins)
            .sum()
    }

    /// Whether a message event can earn the minute's message XP.
    pub fn message_is_eligible(&self, len: Option<u64>) -> bool {
        len.is_none_or(|l| l >= self.min_message_len)
    }

    /// What a UTC minute of an identity's eligible messages pays (SPEC 7.2): message XP
    /// at `mult`, the largest `data.mult` among them, in percent.
    pub fn minute_xp(&self, mult: i64) -> i64 {
        self.message_xp * mult / 100
    }

    /// XP of an event that does not depend on other events: everything but `message`,
    /// whose XP is decided per identity and minute (see [`Rules::message_is_eligible`]).
    pub fn standalone_xp(&self, payload: &Payload) -> i64 {
        match payload {
            Payload::Message { .. }
            | Payload::VoiceUnpaid { .. }
            | Payload::Link { .. }
            | Payload::Prefs { .. }
            | Payload::Unlink { .. }
            | Payload::Forget { .. } => 0,
            Payload::Voice { seconds, .. } => {
                i64::from(*seconds) * self.voice_xp_per_minute * payload.mult() / 6000
            }
            Payload::Game { xp, .. } => i64::from(*xp),
            Payload::Xp { amount, .. } => i64::from(*amount),
        }
    }
}

/// The UTC minute of an event time (message bucket key).
pub fn minute_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MINUTE_MS)
}

/// The UTC day of an event time, as days since the Unix epoch (ledger key).
pub fn day_of(ts_ms: i64) -> i32 {
    i32::try_from(ts_ms.div_euclid(DAY_MS)).unwrap_or(i32::MAX)
}

/// The date of a ledger day (days since the Unix epoch); days beyond what a date can
/// hold are clamped to its range.
pub fn date_of_day(day: i32) -> time::Date {
    const EPOCH_JULIAN: i32 = 2_440_588;
    time::Date::from_julian_day(EPOCH_JULIAN.saturating_add(day)).unwrap_or(if day < 0 {
        time::Date::MIN
    } else {
        time::Date::MAX
    })
}

/// The ledger day of a date (days since the Unix epoch).
pub fn day_of_date(date: time::Date) -> i32 {
    date.to_julian_day() - 2_440_588
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_days_and_dates_convert_both_ways() {
        assert_eq!(date_of_day(0), time::macros::date!(1970 - 01 - 01));
        assert_eq!(
            date_of_day(day_of(1_796_169_600_000)),
            time::macros::date!(2026 - 12 - 02)
        );
        for d in [-1, 0, 1, 20_000, 20_790] {
            assert_eq!(day_of_date(date_of_day(d)), d);
        }
    }

    #[test]
    fn rank_is_the_highest_rank_whose_requirement_is_met() {
        let r = Rules::default();
        assert_eq!(r.rank_index(0), 1);
        assert_eq!(r.rank_index(499), 1);
        assert_eq!(r.rank_index(500), 2);
        assert_eq!(r.rank_index(13_499), 9);
        assert_eq!(r.rank_index(13_500), 10);
        assert_eq!(r.rank_index(52_249), 19);
        assert_eq!(r.rank_index(52_250), 20);
        assert_eq!(r.rank_index(i64::MAX), 20);
        assert_eq!(r.rank_index(-1_000), 1, "negative totals stay at F I");
    }

    #[test]
    fn ranks_describe_name_tier_stars_and_next_requirement() {
        let r = Rules::default();
        let c2 = r.rank(11);
        assert_eq!(
            (c2.name.as_str(), c2.tier.as_str(), c2.stars),
            ("C II", "C", 2)
        );
        assert_eq!((c2.required_xp, c2.next_xp), (16_250, Some(19_250)));
        let s2 = r.rank(20);
        assert_eq!((s2.name.as_str(), s2.next_xp), ("S II", None));
        assert_eq!(r.rank(0).index, 1, "clamped");
    }

    #[test]
    fn coins_pay_every_rank_reached_once_including_skipped_ones() {
        let r = Rules::default();
        assert_eq!(r.coins_for_peak(1), 0);
        assert_eq!(r.coins_for_peak(2), 50);
        assert_eq!(r.coins_for_peak(4), 50 + 100 + 150);
        let all: i64 = [
            50, 100, 150, 200, 300, 400, 500, 700, 900, 1200, 1500, 2000, 2500, 3000, 4000, 5000,
            7000, 10_000, 15_000,
        ]
        .iter()
        .sum();
        assert_eq!(r.coins_for_peak(20), all);
    }

    #[test]
    fn voice_xp_uses_integer_division() {
        let r = Rules::default();
        let voice = |seconds| Payload::Voice {
            seconds,
            channel: None,
            mult: None,
        };
        assert_eq!(r.standalone_xp(&voice(60)), 4);
        assert_eq!(r.standalone_xp(&voice(14)), 0);
        assert_eq!(r.standalone_xp(&voice(15)), 1);
        assert_eq!(r.standalone_xp(&voice(3600)), 240);
    }

    #[test]
    fn game_and_grant_xp_are_taken_as_given() {
        let r = Rules::default();
        let game = Payload::Game {
            game: "chess".into(),
            won: true,
            xp: 120,
        };
        let grant = Payload::Xp {
            amount: -300,
            reason: "admin".into(),
            by: None,
        };
        assert_eq!(r.standalone_xp(&game), 120);
        assert_eq!(r.standalone_xp(&grant), -300);
    }

    #[test]
    fn short_messages_are_not_eligible() {
        let r = Rules::default();
        assert!(r.message_is_eligible(None));
        assert!(r.message_is_eligible(Some(5)));
        assert!(!r.message_is_eligible(Some(4)));
    }

    #[test]
    fn minutes_and_days_are_utc_floors() {
        assert_eq!(minute_of(59_999), 0);
        assert_eq!(minute_of(60_000), 1);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
    }

    #[test]
    fn bad_ladders_are_refused_with_the_key() {
        let mut r = Rules::default();
        assert_eq!(r.validate(), Ok(()));
        r.ranks.swap(2, 3);
        assert_eq!(r.validate().map_err(|e| e.key), Err("ranks"));
        r.ranks.clear();
        assert!(r.validate().is_err());
    }
}
