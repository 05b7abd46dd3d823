//! What an event's `data.mult` is (SPEC 7.2), decided by the platform worker when it
//! publishes, from its settings (`settings::rates`): pure, the same rule on every
//! platform.
//!
//! The rule: `place × role × boost`, in percent, capped at 1000, where
//!
//! - `place` is the channel's (chat's) rate, or when the channel is not listed its
//!   category's, else 100;
//! - `role` is the largest rate among the member's listed roles, else 100 (MEE6 and
//!   Polaris take the largest too: a member never loses by gaining a role);
//! - `boost` is the largest rate among the boosts running at the event's time for its
//!   platform, else 100.
//!
//! A rate of 0 anywhere means no XP. A result of 100 is sent as no `mult` at all, so
//! that a community without rates publishes exactly what a v1 publisher would.

use std::collections::BTreeMap;

use ttfd_shared::wire::MAX_MULT;

/// A timed boost, by event time: `from_ms <= ts < to_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boost {
    pub from_ms: i64,
    pub to_ms: i64,
    pub mult: u16,
    /// Empty: every platform.
    pub platforms: Vec<String>,
}

/// The rate of the boosts running at `ts` on `platform` (100 when none is).
pub fn boost(boosts: &[Boost], platform: &str, ts: i64) -> u16 {
    boosts
        .iter()
        .filter(|b| (b.from_ms..b.to_ms).contains(&ts))
        .filter(|b| b.platforms.is_empty() || b.platforms.iter().any(|p| p == platform))
        .map(|b| b.mult)
        .max()
        .unwrap_or(100)
}

/// A platform's rates by place (channel, chat), group of places (category) and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rates<Id: Ord> {
    pub places: BTreeMap<Id, u16>,
    pub groups: BTreeMap<Id, u16>,
    pub roles: BTreeMap<Id, u16>,
}

impl<Id: Ord> Default for Rates<Id> {
    fn default() -> Self {
        Self {
            places: BTreeMap::new(),
            groups: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

impl<Id: Ord> Rates<Id> {
    /// `data.mult` of an event in `place` (in `group`, if any) by a member with
    /// `roles`, with `boost` running: `None` for 100.
    pub fn mult<'a>(
        &self,
        place: &Id,
        group: Option<&Id>,
        roles: impl IntoIterator<Item = &'a Id>,
        boost: u16,
    ) -> Option<u16>
    where
        Id: 'a,
    {
        let place = self
            .places
            .get(place)
            .or_else(|| group.and_then(|g| self.groups.get(g)))
            .copied()
            .unwrap_or(100);
        let role = roles
            .into_iter()
            .filter_map(|r| self.roles.get(r).copied())
            .max()
            .unwrap_or(100);
        combine([place, role, boost])
    }
}

/// The product of percentages, in percent, capped at [`MAX_MULT`]; `None` for 100.
pub fn combine(factors: impl IntoIterator<Item = u16>) -> Option<u16> {
    let product = factors
        .into_iter()
        .fold(100u64, |acc, f| acc * u64::from(f) / 100);
    let mult = u16::try_from(product.min(u64::from(MAX_MULT))).unwrap_or(MAX_MULT);
    (mult != 100).then_some(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates() -> Rates<u64> {
        Rates {
            places: BTreeMap::from([(1, 0), (2, 200)]),
            groups: BTreeMap::from([(10, 50), (20, 300)]),
            roles: BTreeMap::from([(100, 150), (101, 120)]),
        }
    }

    #[test]
    fn a_place_its_group_the_largest_role_and_a_boost_multiply() {
        let r = rates();
        assert_eq!(
            r.mult(&9, None, [], 100),
            None,
            "nothing listed: 100, no mult"
        );
        assert_eq!(
            r.mult(&1, Some(&20), [&100], 200),
            Some(0),
            "a no-XP channel stays 0"
        );
        assert_eq!(
            r.mult(&2, Some(&10), [], 100),
            Some(200),
            "the channel wins over its category"
        );
        assert_eq!(
            r.mult(&3, Some(&10), [], 100),
            Some(50),
            "an unlisted channel takes its category's"
        );
        assert_eq!(
            r.mult(&3, None, [&101, &100, &7], 100),
            Some(150),
            "the largest role"
        );
        assert_eq!(
            r.mult(&3, Some(&10), [&100], 200),
            Some(150),
            "50 % x 150 % x 200 %"
        );
        assert_eq!(
            r.mult(&2, Some(&20), [&100], 1000),
            Some(1000),
            "capped at 1000"
        );
    }

    #[test]
    fn boosts_run_by_event_time_on_their_platforms() {
        let boosts = [
            Boost {
                from_ms: 1_000,
                to_ms: 2_000,
                mult: 200,
                platforms: vec![],
            },
            Boost {
                from_ms: 1_500,
                to_ms: 3_000,
                mult: 300,
                platforms: vec!["telegram".into()],
            },
        ];
        assert_eq!(boost(&boosts, "discord", 999), 100);
        assert_eq!(boost(&boosts, "discord", 1_000), 200);
        assert_eq!(boost(&boosts, "discord", 1_600), 200);
        assert_eq!(
            boost(&boosts, "telegram", 1_600),
            300,
            "the largest of those running"
        );
        assert_eq!(
            boost(&boosts, "telegram", 2_000),
            300,
            "`to` is excluded for the first"
        );
        assert_eq!(boost(&boosts, "discord", 2_000), 100);
    }
}
