//! `[[seasons]]` and `[champions]` (docs/seasons.md): named seasons with leaderboards of
//! their own, and what happens when one closes.

use serde::Deserialize;
use ttfd_shared::seasons::{Season, Seasons};
use ttfd_shared::view::Period;

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
/// `[champions]`: a closed season's champions (docs/seasons.md); `[champions.week]` and
/// `[champions.month]` close each week and month too, with their own champions.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChampionSettings {
    pub top: u32,
    pub grace_minutes: u32,
    pub discord_role: String,
    pub xp: Vec<i32>,
    pub week: Option<PeriodChampions>,
    pub month: Option<PeriodChampions>,
}

/// `[champions.week]`, `[champions.month]`: how many champions each week (month) has,
/// their XP rewards and their Discord winner role.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeriodChampions {
    pub top: u32,
    pub discord_role: String,
    pub xp: Vec<i32>,
}

impl Default for PeriodChampions {
    fn default() -> Self {
        Self {
            top: 3,
            discord_role: String::new(),
            xp: Vec::new(),
        }
    }
}

impl Default for ChampionSettings {
    fn default() -> Self {
        Self {
            top: 3,
            grace_minutes: 60,
            discord_role: String::new(),
            xp: Vec::new(),
            week: None,
            month: None,
        }
    }
}

/// Checks one closing's champions: `top`, `xp` and `discord_role` under `key`.
fn check_champions(
    key: &str,
    top: u32,
    xp: &[i32],
    discord_role: &str,
) -> Result<(), SettingsError> {
    if !(1..=100).contains(&top) {
        return Err(invalid(&format!("{key}.top"), "must be 1..=100"));
    }
    role_id(key, discord_role)?;
    if xp.len() > top as usize {
        return Err(invalid(
            &format!("{key}.xp"),
            format!("has more entries than {key}.top"),
        ));
    }
    if xp.iter().any(|x| !(0..=1_000_000).contains(x)) {
        return Err(invalid(&format!("{key}.xp"), "each must be 0..=1000000"));
    }
    if xp.windows(2).any(|w| w[1] > w[0]) {
        return Err(invalid(
            &format!("{key}.xp"),
            "must not rise with the position (the first gets the most)",
        ));
    }
    Ok(())
}

fn role_id(key: &str, role: &str) -> Result<Option<u64>, SettingsError> {
    match role.trim() {
        "" => Ok(None),
        id => id.parse::<u64>().map(Some).map_err(|_| {
            invalid(
                &format!("{key}.discord_role"),
                "must be a role id (a number)",
            )
        }),
    }
}

impl ChampionSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        check_champions("champions", self.top, &self.xp, &self.discord_role)?;
        if self.grace_minutes > 7 * 24 * 60 {
            return Err(invalid(
                "champions.grace_minutes",
                "must be at most a week (10080)",
            ));
        }
        for (key, p) in [
            ("champions.week", &self.week),
            ("champions.month", &self.month),
        ] {
            if let Some(p) = p {
                check_champions(key, p.top, &p.xp, &p.discord_role)?;
            }
        }
        Ok(())
    }

    /// The winner role of each kind of closing that has one.
    pub fn roles(&self) -> Result<Vec<(Period, u64)>, SettingsError> {
        let each = [
            (
                Period::Season,
                "champions",
                Some(self.discord_role.as_str()),
            ),
            (
                Period::Week,
                "champions.week",
                self.week.as_ref().map(|p| p.discord_role.as_str()),
            ),
            (
                Period::Month,
                "champions.month",
                self.month.as_ref().map(|p| p.discord_role.as_str()),
            ),
        ];
        let mut roles = Vec::new();
        for (period, key, role) in each {
            if let Some(id) = role.map(|r| role_id(key, r)).transpose()?.flatten() {
                roles.push((period, id));
            }
        }
        Ok(roles)
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
        let week = ChampionSettings {
            week: Some(PeriodChampions {
                top: 2,
                xp: vec![50, 20, 10],
                discord_role: String::new(),
            }),
            ..ChampionSettings::default()
        };
        assert!(
            week.validate()
                .is_err_and(|e| e.to_string().contains("champions.week.xp"))
        );
    }
}
