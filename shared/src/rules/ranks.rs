//! The 20-rank ladder of the original TTFD, F I to S II.

use serde::{Deserialize, Serialize};

/// One rung of the ladder as configured: its name (`"<tier> <roman stars>"`), the XP it
/// requires and the coins it pays when first reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankDef {
    pub name: String,
    pub xp: i64,
    pub coins: i64,
}

impl RankDef {
    /// The tier: the name up to its first space (`"C II"` → `"C"`).
    pub fn tier(&self) -> &str {
        self.name.split(' ').next().unwrap_or(&self.name)
    }

    /// The stars: the roman numeral after the tier (`"C II"` → 2), 1 when absent.
    pub fn stars(&self) -> u8 {
        match self.name.split_once(' ').map(|(_, s)| s) {
            Some("II") => 2,
            Some("III") => 3,
            Some("IV") => 4,
            Some("V") => 5,
            _ => 1,
        }
    }
}

/// A rank as shown to people and in `ttfd user --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rank {
    pub index: u8,
    pub name: String,
    pub tier: String,
    pub stars: u8,
    pub required_xp: i64,
    /// XP required for the next rank, `None` at the top.
    pub next_xp: Option<i64>,
}

/// SPEC section 3's ladder.
pub fn default_ladder() -> Vec<RankDef> {
    const LADDER: [(&str, i64, i64); 20] = [
        ("F I", 0, 0),
        ("F II", 500, 50),
        ("F III", 1250, 100),
        ("E I", 2250, 150),
        ("E II", 3500, 200),
        ("E III", 5000, 300),
        ("D I", 6750, 400),
        ("D II", 8750, 500),
        ("D III", 11_000, 700),
        ("C I", 13_500, 900),
        ("C II", 16_250, 1200),
        ("C III", 19_250, 1500),
        ("B I", 22_500, 2000),
        ("B II", 26_000, 2500),
        ("B III", 29_750, 3000),
        ("A I", 33_750, 4000),
        ("A II", 38_000, 5000),
        ("A III", 42_500, 7000),
        ("S I", 47_250, 10_000),
        ("S II", 52_250, 15_000),
    ];
    LADDER
        .iter()
        .map(|&(name, xp, coins)| RankDef {
            name: name.to_owned(),
            xp,
            coins,
        })
        .collect()
}
