//! `[[seasons]]` and `[champions]` (docs/seasons.md): named seasons with leaderboards of
//! their own, and what happens when one closes.

use serde::Deserialize;
use ttfd_shared::seasons::{Season, Seasons};

use super::{SettingsError, invalid};

/// One `[[seasons]]` entry: `name`, and its first and last day, `from` and `to`
/// (`YYYY-MM-DD`, UTC, both included).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeasonSettings {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// The seasons of `[[seasons]]`, checked (names, dates, no overlap), naming the entry.
pub fn seasons(settings: &[SeasonSettings]) -> Result<Seasons, SettingsError> {
    let list = settings
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Season::parse(&s.name, &s.from, &s.to)
                .map_err(|(field, message)| invalid(&format!("seasons[{i}].{field}"), message))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Seasons::new(list).map_err(|e| invalid(&format!("seasons[{}].{}", e.index, e.field), e.message))
}

/// `[champions]`: a season's closing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChampionSettings {
    /// How many of a season's top members are its champions.
    pub top: u32,
    /// How long after a season's last day (UTC) it closes, in minutes: events of its
    /// days published late (a bot catching up) still count.
    pub grace_minutes: u32,
    /// The Discord role the champions of the last closed season hold (an id); the
    /// champions before lose it. Empty: none.
    pub discord_role: String,
    /// Bonus XP by position (`[500, 300, 100]`: 500 for the first), as `xp` events
    /// (docs/seasons.md); none by default. Never rising, each 0..=1000000, at most `top`.
    pub xp: Vec<i32>,
}

impl Default for ChampionSettings {
    fn default() -> Self {
        Self {
            top: 3,
            grace_minutes: 60,
            discord_role: String::new(),
            xp: Vec::new(),
        }
    }
}

impl ChampionSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=100).contains(&self.top) {
            return Err(invalid("champions.top", "must be 1..=100"));
        }
        if self.grace_minutes > 7 * 24 * 60 {
            return Err(invalid(
                "champions.grace_minutes",
                "must be at most a week (10080)",
            ));
        }
        self.role()?;
        if self.xp.len() > self.top as usize {
            return Err(invalid(
                "champions.xp",
                "has more entries than champions.top",
            ));
        }
        if self.xp.iter().any(|x| !(0..=1_000_000).contains(x)) {
            return Err(invalid("champions.xp", "each must be 0..=1000000"));
        }
        if self.xp.windows(2).any(|w| w[1] > w[0]) {
            return Err(invalid(
                "champions.xp",
                "must not rise with the position (the first gets the most)",
            ));
        }
        Ok(())
    }

    /// The winners' Discord role.
    pub fn role(&self) -> Result<Option<u64>, SettingsError> {
        match self.discord_role.trim() {
            "" => Ok(None),
            id => id
                .parse::<u64>()
                .map(Some)
                .map_err(|_| invalid("champions.discord_role", "must be a role id (a number)")),
        }
    }

    pub fn grace(&self) -> time::Duration {
        time::Duration::minutes(i64::from(self.grace_minutes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, from: &str, to: &str) -> SeasonSettings {
        SeasonSettings {
            name: name.into(),
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn a_bad_season_is_named_by_its_place_and_field() {
        let err = |list: &[SeasonSettings]| match seasons(list) {
            Err(SettingsError::Invalid { key, .. }) => key,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            err(&[entry("Winter!", "2026-12-01", "2027-02-28")]),
            "seasons[0].name"
        );
        assert_eq!(
            err(&[
                entry("winter", "2026-12-01", "2027-02-28"),
                entry("spring", "2027-02-28", "2027-05-31"),
            ]),
            "seasons[1].from"
        );
        assert_eq!(
            err(&[entry("w", "2026-12-01", "2026-1-1x")]),
            "seasons[0].to"
        );
        let ok = seasons(&[entry("winter", "2026-12-01", "2027-02-28")]).expect("valid");
        assert_eq!(ok.iter().count(), 1);
    }

    #[test]
    fn champions_rewards_never_rise_and_fit_the_champions() {
        let check = |xp: Vec<i32>| {
            ChampionSettings {
                xp,
                ..ChampionSettings::default()
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        assert!(check(vec![500, 300, 300]).is_ok());
        assert!(check(vec![300, 500]).is_err_and(|e| e.contains("champions.xp")));
        assert!(check(vec![3, 2, 1, 0]).is_err_and(|e| e.contains("more entries")));
        assert!(check(vec![-1]).is_err());
    }
}
