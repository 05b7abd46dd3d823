//! The pure part of the import: what a legacy row means ([`person`]) and which events
//! carry it ([`Person::events`]). No I/O; the layouts and the choices are documented in
//! `docs/import.md`.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use ttfd_shared::wire::{EventId, Proof};
use ttfd_shared::{Event, Identity, Payload, Platform};

/// The `reason` of every imported `xp` event.
pub const XP_REASON: &str = "import";
/// The `game` of every imported `game` event (the old bots kept counts, not games).
pub const GAME_NAME: &str = "legacy";
/// Largest `amount` of one `xp` event (SPEC 4); larger totals are split.
const MAX_XP_EVENT: i64 = 1_000_000;
/// Most XP one row may carry (1000 events); more is taken for a wrong column.
const MAX_ROW_XP: i64 = 1_000 * MAX_XP_EVENT;
/// Most games one row may carry (each becomes an event).
pub const MAX_ROW_GAMES: u32 = 100_000;
/// SPEC 4: a display name is 1..=100 characters.
const MAX_NAME_CHARS: usize = 100;

/// Whose rows a source holds, which says what its columns mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// The old Telegram bot's `users`: `telegram_id`, `username`, `first_name`,
    /// `last_name`, `xp`, `discord_id`.
    Telegram,
    /// The old Discord bot's `users`: `id`, `username`, `xp`, `games_played`,
    /// `games_won`, `telegram_id`.
    Discord,
    /// The old website's `accounts`: `username`, `display_name`, `discord_id`.
    Website,
    /// Rows of any platform: `platform`, `user`, `name`, `xp`, `games_played`,
    /// `games_won`, `link_platform`, `link_user`.
    Records,
}

impl Layout {
    pub fn label(self) -> &'static str {
        match self {
            Layout::Telegram => "telegram",
            Layout::Discord => "discord",
            Layout::Website => "website",
            Layout::Records => "records",
        }
    }

    /// The fields read, in order; the first is the row's key. Nothing else is read:
    /// not `coins`, not `email`, not passwords.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Layout::Telegram => &[
                "telegram_id",
                "username",
                "first_name",
                "last_name",
                "xp",
                "discord_id",
            ],
            Layout::Discord => &[
                "id",
                "username",
                "xp",
                "games_played",
                "games_won",
                "telegram_id",
            ],
            Layout::Website => &["username", "display_name", "discord_id"],
            Layout::Records => &[
                "user",
                "platform",
                "name",
                "xp",
                "games_played",
                "games_won",
                "link_platform",
                "link_user",
            ],
        }
    }

    /// The field naming the row (required).
    pub fn key(self) -> &'static str {
        self.fields()[0]
    }
}

/// One row as read: field → value (`None` for NULL or an empty cell).
pub type Row = HashMap<String, Option<String>>;

/// What one legacy row carries over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub identity: Identity,
    pub name: Option<String>,
    /// The row's XP total (never negative).
    pub xp: i64,
    pub games_played: u32,
    pub games_won: u32,
    /// Identities on other platforms the row names: linked with proof `import`.
    pub links: Vec<Identity>,
}

/// Reads one row of `layout`. `default_platform` is the platform of `Records` rows
/// without one. `Err` says why the row is bad, naming the field.
pub fn person(layout: Layout, row: &Row, default_platform: Option<&str>) -> Result<Person, String> {
    let text = |f: &str| -> Option<&str> {
        row.get(f)
            .and_then(|v| v.as_deref())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let required = |f: &str| text(f).ok_or_else(|| format!("{f} is missing"));
    match layout {
        Layout::Telegram => {
            let id = numeric_id("telegram_id", required("telegram_id")?)?;
            let full = match (text("first_name"), text("last_name")) {
                (Some(first), Some(last)) => Some(format!("{first} {last}")),
                (first, _) => first.map(str::to_owned),
            };
            Ok(Person {
                identity: identity("telegram", &id)?,
                name: clean_name(full.as_deref()).or_else(|| clean_name(text("username"))),
                xp: xp(text("xp"))?,
                games_played: 0,
                games_won: 0,
                links: optional_link("discord", "discord_id", text("discord_id"))?,
            })
        }
        Layout::Discord => {
            let id = numeric_id("id", required("id")?)?;
            let (played, won) = games(text("games_played"), text("games_won"))?;
            Ok(Person {
                identity: identity("discord", &id)?,
                name: clean_name(text("username")),
                xp: xp(text("xp"))?,
                games_played: played,
                games_won: won,
                links: optional_link("telegram", "telegram_id", text("telegram_id"))?,
            })
        }
        Layout::Website => {
            let username = required("username")?;
            Ok(Person {
                identity: identity("website", username)?,
                name: clean_name(text("display_name")).or_else(|| clean_name(Some(username))),
                xp: 0,
                games_played: 0,
                games_won: 0,
                links: optional_link("discord", "discord_id", text("discord_id"))?,
            })
        }
        Layout::Records => {
            let platform = text("platform")
                .or(default_platform)
                .ok_or("platform is missing (and no --platform was given)")?;
            let user = required("user")?;
            let (played, won) = games(text("games_played"), text("games_won"))?;
            let links = match (text("link_platform"), text("link_user")) {
                (None, None) => Vec::new(),
                (Some(p), Some(u)) => {
                    vec![Identity::new(p, u).map_err(|e| format!("link_platform/link_user: {e}"))?]
                }
                _ => return Err("link_platform and link_user go together".into()),
            };
            Ok(Person {
                identity: identity(platform, user)?,
                name: clean_name(text("name")),
                xp: xp(text("xp"))?,
                games_played: played,
                games_won: won,
                links,
            })
        }
    }
}

fn identity(platform: &str, user: &str) -> Result<Identity, String> {
    Platform::parse(platform).map_err(|e| format!("platform: {e}"))?;
    Identity::new(platform, user).map_err(|e| format!("{platform} id {user:?}: {e}"))
}

/// A Discord snowflake or a Telegram user id: a positive integer.
fn numeric_id(field: &str, value: &str) -> Result<String, String> {
    match integer(value) {
        Some(n) if n > 0 => Ok(n.to_string()),
        _ => Err(format!("{field} {value:?} is not a positive integer")),
    }
}

/// The other platform's id a row names, if any: empty, NULL and `0` (the old bots'
/// "not linked") name nobody.
fn optional_link(
    platform: &str,
    field: &str,
    value: Option<&str>,
) -> Result<Vec<Identity>, String> {
    match value {
        None => Ok(Vec::new()),
        Some(v) if integer(v) == Some(0) => Ok(Vec::new()),
        Some(v) => Ok(vec![identity(platform, &numeric_id(field, v)?)?]),
    }
}

/// An integer, also when written as an integral float (`12.0`, as JSON exports do).
fn integer(value: &str) -> Option<i64> {
    let value = value.trim();
    value.parse::<i64>().ok().or_else(|| {
        let f = value.parse::<f64>().ok()?;
        // Beyond 2^53 a float no longer names one integer.
        (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    })
}

fn xp(value: Option<&str>) -> Result<i64, String> {
    let Some(value) = value else { return Ok(0) };
    match integer(value) {
        Some(n) if (0..=MAX_ROW_XP).contains(&n) => Ok(n),
        Some(n) if n < 0 => Err(format!("xp {n} is negative")),
        Some(n) => Err(format!("xp {n} is more than {MAX_ROW_XP}")),
        None => Err(format!("xp {value:?} is not an integer")),
    }
}

fn games(played: Option<&str>, won: Option<&str>) -> Result<(u32, u32), String> {
    let count = |field: &str, value: Option<&str>| -> Result<u32, String> {
        let Some(value) = value else { return Ok(0) };
        match integer(value) {
            Some(n) if (0..=i64::from(MAX_ROW_GAMES)).contains(&n) => {
                Ok(u32::try_from(n).unwrap_or(MAX_ROW_GAMES))
            }
            Some(n) => Err(format!("{field} {n} must be 0..={MAX_ROW_GAMES}")),
            None => Err(format!("{field} {value:?} is not an integer")),
        }
    };
    let played = count("games_played", played)?;
    let won = count("games_won", won)?;
    if won > played {
        return Err(format!(
            "games_won {won} is more than games_played {played}"
        ));
    }
    Ok((played, won))
}

/// A display name as SPEC 4 allows: no control characters, trimmed, at most 100
/// characters; `None` when nothing is left.
fn clean_name(name: Option<&str>) -> Option<String> {
    let cleaned: String = name?
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_NAME_CHARS)
        .collect();
    let cleaned = cleaned.trim_end().to_owned();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// A deterministic event id from its parts. Ids are printable ASCII of at most 200
/// characters; an id that would not be (a non-ASCII website username, very long ids)
/// becomes `import:sha256:<hex of the plain id>`, just as deterministic.
pub fn event_id(plain: &str) -> EventId {
    EventId::parse(plain).unwrap_or_else(|_| {
        let hash = hex::encode(Sha256::digest(plain.as_bytes()));
        EventId::parse(&format!("import:sha256:{hash}"))
            .expect("78 printable ASCII characters are a valid id")
    })
}

/// The id of the `link` between two identities: the same from either side, so a link
/// named by both rows (Discord's `telegram_id` and Telegram's `discord_id`) is one fact.
pub fn link_id(a: &Identity, b: &Identity) -> EventId {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    event_id(&format!("import:link:{first}:{second}"))
}

impl Person {
    /// Whether the row carries anything over (XP, games or a link).
    pub fn is_empty(&self) -> bool {
        self.xp == 0 && self.games_played == 0 && self.links.is_empty()
    }

    /// The events that carry this row, all at `ts`, each with the row's name:
    ///
    /// - `xp` (`import:<identity>:xp`, then `:xp:2`, ... for every further million):
    ///   the old XP total, reason `import`; none when it is 0;
    /// - `game` (`import:<identity>:game:<n>`, n = 1..=games_played, the first
    ///   `games_won` won), each worth **0 XP**: the old XP total already includes what
    ///   the games earned, so they only restore the counters;
    /// - `link` (see [`link_id`]), proof `import`, for each other identity the row names.
    pub fn events(&self, ts: i64) -> Vec<Event> {
        let who = &self.identity;
        let event = |id: EventId, payload: Payload| Event {
            id,
            ts,
            identity: who.clone(),
            name: self.name.clone(),
            payload,
        };
        let mut events = Vec::new();
        let mut left = self.xp;
        let mut part = 1;
        while left > 0 {
            let amount = left.min(MAX_XP_EVENT);
            left -= amount;
            let id = if part == 1 {
                format!("import:{who}:xp")
            } else {
                format!("import:{who}:xp:{part}")
            };
            events.push(event(
                event_id(&id),
                Payload::Xp {
                    amount: i32::try_from(amount).expect("at most 1,000,000"),
                    reason: XP_REASON.into(),
                    by: None,
                },
            ));
            part += 1;
        }
        for n in 1..=self.games_played {
            events.push(event(
                event_id(&format!("import:{who}:game:{n}")),
                Payload::Game {
                    game: GAME_NAME.into(),
                    won: n <= self.games_won,
                    xp: 0,
                },
            ));
        }
        for other in &self.links {
            events.push(event(
                link_id(who, other),
                Payload::Link {
                    other: other.clone(),
                    proof: Proof::Import,
                    by: None,
                },
            ));
        }
        events
    }

    /// How many events [`Person::events`] makes, by kind: `(xp, game, link)`.
    pub fn event_counts(&self) -> (u64, u64, u64) {
        let xp = u64::try_from(self.xp)
            .unwrap_or(0)
            .div_ceil(MAX_XP_EVENT as u64);
        (xp, u64::from(self.games_played), self.links.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use ttfd_shared::wire;

    use super::*;

    fn row(pairs: &[(&str, &str)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
            .collect()
    }

    const TS: i64 = 1_780_000_000_000;

    #[test]
    fn a_discord_row_becomes_xp_games_and_a_link_to_telegram() {
        let p = person(
            Layout::Discord,
            &row(&[
                ("id", "80351110224678912"),
                ("username", "nelly"),
                ("xp", "2500"),
                ("games_played", "3"),
                ("games_won", "1"),
                ("telegram_id", "4242"),
            ]),
            None,
        )
        .expect("valid");
        let events = p.events(TS);
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "import:discord:80351110224678912:xp",
                "import:discord:80351110224678912:game:1",
                "import:discord:80351110224678912:game:2",
                "import:discord:80351110224678912:game:3",
                "import:link:discord:80351110224678912:telegram:4242",
            ]
        );
        assert_eq!(p.event_counts(), (1, 3, 1));
        let won: Vec<bool> = events
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Game { won, xp, .. } => {
                    assert_eq!(*xp, 0, "games carry no XP: the total has it");
                    Some(*won)
                }
                _ => None,
            })
            .collect();
        assert_eq!(won, [true, false, false]);
        for e in &events {
            assert_eq!(e.name.as_deref(), Some("nelly"));
            // Every event passes the consumers' own validation.
            let decoded = wire::decode(
                &wire::encode(e),
                (e.identity.platform.as_str(), e.kind()),
                TS,
            )
            .expect("valid on the wire");
            assert_eq!(&decoded, e);
        }
    }

    #[test]
    fn a_link_has_the_same_id_from_either_side() {
        let d = Identity::new("discord", "1").expect("id");
        let t = Identity::new("telegram", "2").expect("id");
        assert_eq!(link_id(&d, &t), link_id(&t, &d));
    }

    #[test]
    fn telegram_names_are_first_and_last_name_else_the_username() {
        let full = person(
            Layout::Telegram,
            &row(&[
                ("telegram_id", "7"),
                ("first_name", " Ada "),
                ("last_name", "Lovelace"),
                ("username", "ada"),
                ("xp", "10"),
            ]),
            None,
        )
        .expect("valid");
        assert_eq!(full.name.as_deref(), Some("Ada Lovelace"));
        let bare = person(
            Layout::Telegram,
            &row(&[("telegram_id", "8"), ("username", "grace"), ("xp", "1")]),
            None,
        )
        .expect("valid");
        assert_eq!(bare.name.as_deref(), Some("grace"));
        assert_eq!(bare.identity.to_string(), "telegram:8");
    }

    #[test]
    fn large_xp_is_split_into_events_of_at_most_a_million() {
        let p = person(
            Layout::Records,
            &row(&[
                ("platform", "minecraft"),
                ("user", "steve"),
                ("xp", "2500000"),
            ]),
            None,
        )
        .expect("valid");
        let amounts: Vec<i32> = p
            .events(TS)
            .iter()
            .filter_map(|e| match e.payload {
                Payload::Xp { amount, .. } => Some(amount),
                _ => None,
            })
            .collect();
        assert_eq!(amounts, [1_000_000, 1_000_000, 500_000]);
        assert_eq!(p.event_counts().0, 3);
    }

    /// A layout, a row's fields, and a part of the reason it is refused.
    type Case = (
        Layout,
        &'static [(&'static str, &'static str)],
        &'static str,
    );

    #[test]
    fn bad_rows_say_which_field_is_wrong() {
        let cases: [Case; 8] = [
            (Layout::Discord, &[("username", "x")], "id is missing"),
            (Layout::Discord, &[("id", "abc")], "id \"abc\""),
            (Layout::Discord, &[("id", "5"), ("xp", "-3")], "negative"),
            (Layout::Discord, &[("id", "5"), ("xp", "lots")], "xp"),
            (
                Layout::Discord,
                &[("id", "5"), ("games_played", "1"), ("games_won", "2")],
                "games_won 2",
            ),
            (
                Layout::Telegram,
                &[("telegram_id", "5"), ("discord_id", "x1")],
                "discord_id",
            ),
            (Layout::Records, &[("user", "u")], "platform is missing"),
            (
                Layout::Records,
                &[("platform", "mc"), ("user", "u"), ("link_user", "v")],
                "link_platform",
            ),
        ];
        for (layout, fields, expected) in cases {
            let err = person(layout, &row(fields), None).expect_err("bad row");
            assert!(err.contains(expected), "{fields:?}: {err}");
        }
    }

    #[test]
    fn zero_and_empty_link_ids_name_nobody_and_floats_that_are_integers_pass() {
        let p = person(
            Layout::Discord,
            &row(&[("id", "9"), ("xp", "120.0"), ("telegram_id", "0")]),
            None,
        )
        .expect("valid");
        assert!(p.links.is_empty());
        assert_eq!(p.xp, 120);
        let empty = person(Layout::Website, &row(&[("username", "solo")]), None).expect("valid");
        assert!(empty.is_empty(), "nothing to carry over");
    }

    #[test]
    fn ids_that_cannot_be_plain_ascii_are_hashed_deterministically() {
        let p = person(
            Layout::Website,
            &row(&[("username", "José"), ("discord_id", "77")]),
            None,
        )
        .expect("valid");
        let a = p.events(TS);
        let b = p.events(TS + 1);
        assert!(a[0].id.as_str().starts_with("import:"), "{:?}", a[0].id);
        assert_eq!(a[0].id, b[0].id, "ids do not depend on the time");
        assert_eq!(a[0].identity.to_string(), "website:José");
        assert_eq!(
            event_id("import:website:José:xp"),
            event_id("import:website:José:xp")
        );
        assert!(
            event_id("import:website:José:xp")
                .as_str()
                .starts_with("import:sha256:")
        );
    }
}
