//! Seasons (docs/seasons.md): named spans of UTC days with leaderboards of their own.
//!
//! Nothing is reset: a season's standings are one more period key, `season:<name>`,
//! summing the XP its members earned on its days, as a week's or a month's do. All-time
//! XP and ranks never look at seasons. Seasons never overlap, so a day is in at most one
//! and "the current season" is one season or none.

use std::fmt;

use time::Date;
use time::macros::format_description;

/// The start of every season's standings key.
pub const KEY_PREFIX: &str = "season:";
/// The longest season name.
pub const MAX_NAME: usize = 40;

/// A season: its name (its key in standings, URLs and commands) and its first and last
/// UTC day, both included.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Season {
    pub name: String,
    pub first: Date,
    pub last: Date,
}

/// A season that cannot be: `index` is its place in the list given (for the settings'
/// `seasons[i]` key), `field` the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seasons[{index}].{field}: {message}")]
pub struct SeasonError {
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

impl Season {
    /// The season `name` from `first` to `last` (`YYYY-MM-DD`, both included); the
    /// error names the field.
    pub fn parse(name: &str, first: &str, last: &str) -> Result<Self, (&'static str, String)> {
        if !valid_name(name) {
            return Err((
                "name",
                format!(
                    "{name:?} must be 1..={MAX_NAME} characters of a-z, 0-9, '-', '_' and '.' \
                     (it is part of keys, addresses and commands)"
                ),
            ));
        }
        let day = |field: &'static str, s: &str| {
            Date::parse(s.trim(), format_description!("[year]-[month]-[day]"))
                .map_err(|e| (field, format!("{s:?} is not a YYYY-MM-DD date: {e}")))
        };
        let (first, last) = (day("from", first)?, day("to", last)?);
        if last < first {
            return Err(("to", format!("{last} is before from, {first}")));
        }
        Ok(Season {
            name: name.to_owned(),
            first,
            last,
        })
    }

    /// The key of its standings: `season:<name>`.
    pub fn key(&self) -> String {
        format!("{KEY_PREFIX}{}", self.name)
    }

    /// Whether UTC day `day` is one of its days.
    pub fn contains(&self, day: Date) -> bool {
        (self.first..=self.last).contains(&day)
    }

    /// Whether it is over on UTC day `today`.
    pub fn over(&self, today: Date) -> bool {
        self.last < today
    }
}

impl fmt::Display for Season {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} to {})", self.name, self.first, self.last)
    }
}

/// Whether `name` can name a season.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// The seasons in force: in order of their days, names distinct, none overlapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seasons(Vec<Season>);

impl Seasons {
    /// The seasons of `list`, in any order, checked.
    pub fn new(list: Vec<Season>) -> Result<Self, SeasonError> {
        let mut order: Vec<(usize, Season)> = list.into_iter().enumerate().collect();
        order.sort_by_key(|(_, s)| s.first);
        for pair in order.windows(2) {
            let ((_, a), (j, b)) = (&pair[0], &pair[1]);
            if b.first <= a.last {
                return Err(SeasonError {
                    index: *j,
                    field: "from",
                    message: format!("{b} overlaps {a}: a day is in one season at most"),
                });
            }
        }
        let mut names = std::collections::HashMap::new();
        for (i, s) in &order {
            if let Some(other) = names.insert(s.name.as_str(), *i) {
                return Err(SeasonError {
                    index: (*i).max(other),
                    field: "name",
                    message: format!("{:?} names two seasons", s.name),
                });
            }
        }
        Ok(Seasons(order.into_iter().map(|(_, s)| s).collect()))
    }

    /// The season UTC day `day` is in.
    pub fn at(&self, day: Date) -> Option<&Season> {
        let i = self.0.partition_point(|s| s.last < day);
        self.0.get(i).filter(|s| s.contains(day))
    }

    /// The season named `name`.
    pub fn named(&self, name: &str) -> Option<&Season> {
        self.0.iter().find(|s| s.name == name)
    }

    /// Every season, first first.
    pub fn iter(&self) -> std::slice::Iter<'_, Season> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Seasons {
    type Item = &'a Season;
    type IntoIter = std::slice::Iter<'a, Season>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn season(name: &str, first: &str, last: &str) -> Season {
        Season::parse(name, first, last).expect("a season")
    }

    #[test]
    fn a_day_is_in_the_season_whose_days_hold_it() {
        let seasons = Seasons::new(vec![
            season("spring", "2027-03-01", "2027-05-31"),
            season("winter", "2026-12-01", "2027-02-28"),
        ])
        .expect("valid");
        assert_eq!(seasons.at(date!(2026 - 11 - 30)), None);
        assert_eq!(
            seasons.at(date!(2026 - 12 - 01)).map(|s| &*s.name),
            Some("winter")
        );
        assert_eq!(
            seasons.at(date!(2027 - 02 - 28)).map(|s| &*s.name),
            Some("winter")
        );
        assert_eq!(
            seasons.at(date!(2027 - 03 - 01)).map(|s| &*s.name),
            Some("spring")
        );
        assert_eq!(seasons.at(date!(2027 - 06 - 01)), None);
        assert_eq!(
            seasons.named("spring").map(Season::key),
            Some("season:spring".into())
        );
        let names: Vec<&str> = seasons.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["winter", "spring"], "in order of their days");
        assert!(
            seasons
                .named("winter")
                .is_some_and(|s| s.over(date!(2027 - 03 - 01)))
        );
    }

    #[test]
    fn bad_seasons_are_refused_naming_the_field() {
        assert_eq!(
            Season::parse("Winter 2026", "2026-12-01", "2027-02-28")
                .expect_err("refused")
                .0,
            "name"
        );
        assert_eq!(
            Season::parse("w", "2026-13-01", "2027-02-28")
                .expect_err("refused")
                .0,
            "from"
        );
        assert_eq!(
            Season::parse("w", "2026-12-01", "2026-11-30")
                .expect_err("refused")
                .0,
            "to"
        );
        let overlap = Seasons::new(vec![
            season("a", "2026-12-01", "2026-12-31"),
            season("b", "2026-12-31", "2027-01-31"),
        ])
        .expect_err("refused");
        assert_eq!((overlap.index, overlap.field), (1, "from"));
        let twice = Seasons::new(vec![
            season("a", "2026-12-01", "2026-12-31"),
            season("a", "2027-01-01", "2027-01-31"),
        ])
        .expect_err("refused");
        assert_eq!((twice.index, twice.field), (1, "name"));
    }
}
