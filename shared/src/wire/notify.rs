//! Facts published to `<prefix>.notify.*` (SPEC 4, Notifications).

use serde::{Deserialize, Serialize};

use crate::Identity;

/// An identity as it appears in notifications: `{platform, user}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireIdentity {
    pub platform: String,
    pub user: String,
}

impl From<&Identity> for WireIdentity {
    fn from(i: &Identity) -> Self {
        Self {
            platform: i.platform.as_str().to_owned(),
            user: i.user.as_str().to_owned(),
        }
    }
}

/// `<prefix>.notify.rank`: a user's rank changed in a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankNotice {
    pub v: u8,
    /// Also the `Nats-Msg-Id`: `rank:<outbox id>.<outbox row creation, Unix µs>`.
    pub id: String,
    /// When the change was committed, Unix milliseconds.
    pub ts: i64,
    pub uid: i64,
    pub old_rank: u8,
    pub new_rank: u8,
    pub xp: i64,
    pub identities: Vec<WireIdentity>,
    /// Whether the member wants rank-up announcements (SPEC 7.3, as the preferences
    /// stood when the change was committed). Added in v1.1: absent means yes.
    #[serde(default = "yes")]
    pub notify: bool,
    /// Whether the member is hidden (SPEC 7.3): then no public announcement, a private
    /// one at most. Added in v1.1: absent means no.
    #[serde(default)]
    pub hidden: bool,
}

fn yes() -> bool {
    true
}

fn a_season() -> crate::view::Period {
    crate::view::Period::Season
}

/// `<prefix>.notify.link`: two users were merged; `merged_uid` now redirects to `uid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkNotice {
    pub v: u8,
    /// Also the `Nats-Msg-Id`: `link:<outbox id>.<outbox row creation, Unix µs>`.
    pub id: String,
    pub ts: i64,
    pub uid: i64,
    pub merged_uid: i64,
    /// The event that made the link.
    pub event: String,
    pub identities: Vec<WireIdentity>,
}

/// `<prefix>.notify.season` (added with seasons; docs/seasons.md): a season closed, with
/// its champions. Published once per season: the id is `season:<name>`, so a second
/// closing would be JetStream's duplicate too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeasonNotice {
    pub v: u8,
    /// What closed: a season, or (docs/seasons.md, "Weeks and months") a week or a
    /// month, whose `season` is then its standings key (`week:2026-W49`). Added with
    /// weekly and monthly champions: absent means a season.
    #[serde(default = "a_season")]
    pub period: crate::view::Period,
    /// Also the `Nats-Msg-Id`: `season:<name>`.
    pub id: String,
    /// When it closed, Unix milliseconds.
    pub ts: i64,
    pub season: String,
    /// Its first and last day, `YYYY-MM-DD`.
    pub from: String,
    pub to: String,
    /// How many members it ranked.
    pub ranked: i64,
    /// Position 1 first; hidden members (SPEC 7.3) are not champions.
    pub champions: Vec<SeasonChampion>,
    /// The champions of the season closed before it (a winner role moves from them to
    /// these).
    #[serde(default)]
    pub previous: Vec<SeasonChampion>,
}

/// One champion of a [`SeasonNotice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeasonChampion {
    pub position: u32,
    pub uid: i64,
    pub xp: i64,
    pub display_name: Option<String>,
    pub identities: Vec<WireIdentity>,
}
