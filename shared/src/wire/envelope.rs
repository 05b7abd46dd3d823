//! The event envelope: a MessagePack map with string keys (SPEC 4, Envelope).

use std::io::Cursor;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Rejection;
use crate::{Identity, Platform, PlatformUser};

/// Largest accepted envelope.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// 2015-01-01T00:00:00Z: no event is older.
const MIN_TS_MS: i64 = 1_420_070_400_000;
/// Events may be at most this far in the future (clock skew of publishers).
const MAX_AHEAD_MS: i64 = 24 * 3_600_000;

/// An event id: 1..=200 printable ASCII characters, deterministic for its fact.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(String);

impl EventId {
    pub fn parse(s: &str) -> Result<Self, Rejection> {
        if (1..=200).contains(&s.len()) && s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(Rejection::new(
                "bad_id",
                "id must be 1..=200 printable ASCII characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a link was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proof {
    Oauth,
    Code,
    Import,
    Admin,
}

impl Proof {
    pub fn as_str(self) -> &'static str {
        match self {
            Proof::Oauth => "oauth",
            Proof::Code => "code",
            Proof::Import => "import",
            Proof::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Result<Self, Rejection> {
        Ok(match s {
            "oauth" => Proof::Oauth,
            "code" => Proof::Code,
            "import" => Proof::Import,
            "admin" => Proof::Admin,
            other => {
                return Err(Rejection::new(
                    "out_of_range",
                    format!("data.proof {other:?} is not one of oauth, code, import, admin"),
                ));
            }
        })
    }
}

/// What happened, per kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Payload {
    Message {
        len: Option<u64>,
        chat: Option<String>,
        /// SPEC 7.2: the percentage of XP this message's minute pays at most; `None`
        /// (a v1 publisher) means 100.
        mult: Option<u16>,
    },
    Voice {
        seconds: u32,
        channel: Option<String>,
        /// SPEC 7.2: the percentage of XP these seconds pay; `None` means 100.
        mult: Option<u16>,
    },
    /// Voice time the platform's rules pay nothing for, and why (the XP statement
    /// explains it): XP 0, and no counter (`voice_seconds` stays the time `voice`
    /// events carry).
    VoiceUnpaid {
        seconds: u32,
        why: Unpaid,
        channel: Option<String>,
    },
    Game {
        game: String,
        won: bool,
        xp: u32,
    },
    Xp {
        amount: i32,
        reason: String,
        /// SPEC 7.1: the moderator or operator who made the change.
        by: Option<Identity>,
    },
    Link {
        other: Identity,
        proof: Proof,
        /// SPEC 7.1: the operator who linked by hand (proof `admin`).
        by: Option<Identity>,
    },
    /// SPEC 7.3: the identity's preferences; a field left out is not changed.
    Prefs {
        hidden: Option<bool>,
        notify: Option<bool>,
    },
    /// SPEC 7.4: every link between this identity and `other` up to this event's time
    /// no longer counts.
    Unlink {
        other: Identity,
        reason: String,
        by: Option<Identity>,
    },
    /// SPEC 7.4, erasure: every event of this identity, and every link naming it, up to
    /// this event's time no longer counts; later events start over.
    Forget {
        reason: String,
        by: Option<Identity>,
    },
}

/// Why voice time paid nothing (`voice_unpaid`, `data.why`). When several hold, the
/// first of this order is named: the AFK channel, deafened, muted, alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unpaid {
    Afk,
    Deafened,
    Muted,
    Alone,
}

impl Unpaid {
    pub const ALL: [Unpaid; 4] = [Unpaid::Afk, Unpaid::Deafened, Unpaid::Muted, Unpaid::Alone];

    pub fn as_str(self) -> &'static str {
        match self {
            Unpaid::Afk => "afk",
            Unpaid::Deafened => "deafened",
            Unpaid::Muted => "muted",
            Unpaid::Alone => "alone",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Rejection> {
        Unpaid::ALL
            .into_iter()
            .find(|u| u.as_str() == s)
            .ok_or_else(|| {
                Rejection::new(
                    "out_of_range",
                    format!("data.why {s:?} is not one of afk, deafened, muted, alone"),
                )
            })
    }
}

/// The largest `data.mult` (SPEC 7.2): ten times the XP.
pub const MAX_MULT: u16 = 1000;

impl Payload {
    /// The percentage of its XP an activity pays (SPEC 7.2): `data.mult`, 100 when absent.
    pub fn mult(&self) -> i64 {
        match self {
            Payload::Message { mult, .. } | Payload::Voice { mult, .. } => {
                mult.map_or(100, i64::from)
            }
            _ => 100,
        }
    }

    /// Sets `data.mult` of a `message` or `voice` (SPEC 7.2); other kinds have none.
    pub fn set_mult(&mut self, value: Option<u16>) {
        if let Payload::Message { mult, .. } | Payload::Voice { mult, .. } = self {
            *mult = value;
        }
    }

    /// The other identity a `link` or an `unlink` names.
    pub fn other(&self) -> Option<&Identity> {
        match self {
            Payload::Link { other, .. } | Payload::Unlink { other, .. } => Some(other),
            _ => None,
        }
    }

    /// Who made the change, when the event says (SPEC 7.1).
    pub fn by(&self) -> Option<&Identity> {
        match self {
            Payload::Xp { by, .. }
            | Payload::Link { by, .. }
            | Payload::Unlink { by, .. }
            | Payload::Forget { by, .. } => by.as_ref(),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Message { .. } => "message",
            Payload::Voice { .. } => "voice",
            Payload::VoiceUnpaid { .. } => "voice_unpaid",
            Payload::Game { .. } => "game",
            Payload::Xp { .. } => "xp",
            Payload::Link { .. } => "link",
            Payload::Prefs { .. } => "prefs",
            Payload::Unlink { .. } => "unlink",
            Payload::Forget { .. } => "forget",
        }
    }
}

/// A valid event. Holding one means every rule of the envelope held.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub id: EventId,
    /// Event time, Unix milliseconds.
    pub ts: i64,
    pub identity: Identity,
    pub name: Option<String>,
    pub payload: Payload,
}

impl Event {
    pub fn kind(&self) -> &'static str {
        self.payload.kind()
    }
}

#[derive(Deserialize)]
struct Head {
    v: u64,
    id: String,
    ts: i64,
    platform: String,
    user: String,
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "data")]
    _data: MapOnly,
}

/// Accepts a MessagePack map and nothing else: `data` is read per kind afterwards, and
/// a struct would otherwise also decode from an array, by position.
struct MapOnly;

impl<'de> Deserialize<'de> for MapOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = MapOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<MapOnly, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MapOnly)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
struct WithData<T> {
    data: T,
}

#[derive(Deserialize)]
struct MessageData {
    #[serde(default)]
    len: Option<u64>,
    #[serde(default)]
    chat: Option<String>,
    #[serde(default)]
    mult: Option<u64>,
}

#[derive(Deserialize)]
struct VoiceData {
    seconds: u64,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    mult: Option<u64>,
}

/// `data.by` (SPEC 7.1).
#[derive(Deserialize)]
struct ByData {
    platform: String,
    user: String,
}

#[derive(Deserialize)]
struct VoiceUnpaidData {
    seconds: u64,
    why: String,
    #[serde(default)]
    channel: Option<String>,
}

#[derive(Deserialize)]
struct GameData {
    game: String,
    won: bool,
    xp: u64,
}

#[derive(Deserialize)]
struct XpData {
    amount: i64,
    reason: String,
    #[serde(default)]
    by: Option<ByData>,
}

#[derive(Deserialize)]
struct PrefsData {
    #[serde(default)]
    hidden: Option<bool>,
    #[serde(default)]
    notify: Option<bool>,
}

#[derive(Deserialize)]
struct ForgetData {
    reason: String,
    #[serde(default)]
    by: Option<ByData>,
}

#[derive(Deserialize)]
struct UnlinkData {
    platform: String,
    user: String,
    reason: String,
    #[serde(default)]
    by: Option<ByData>,
}

#[derive(Deserialize)]
struct LinkData {
    platform: String,
    user: String,
    proof: String,
    #[serde(default)]
    by: Option<ByData>,
}

/// `data.mult`: 0..=[`MAX_MULT`] when present.
fn mult_in(mult: Option<u64>) -> Result<Option<u16>, Rejection> {
    mult.map(|m| {
        u16::try_from(m)
            .ok()
            .filter(|m| *m <= MAX_MULT)
            .ok_or_else(|| out_of_range(format!("data.mult {m} must be 0..={MAX_MULT}")))
    })
    .transpose()
}

/// `data.seconds` of `voice` and `voice_unpaid`: 1..=3600.
fn voice_seconds_in(seconds: u64) -> Result<u32, Rejection> {
    u32::try_from(seconds)
        .ok()
        .filter(|s| (1..=3600).contains(s))
        .ok_or_else(|| out_of_range(format!("data.seconds {seconds} must be 1..=3600")))
}

/// `data.by`: an identity when present.
fn by_in(by: Option<ByData>) -> Result<Option<Identity>, Rejection> {
    by.map(|b| {
        Identity::new(&b.platform, &b.user).map_err(|e| out_of_range(format!("data.by: {e}")))
    })
    .transpose()
}

/// Decodes one whole MessagePack value from `bytes`, refusing trailing bytes.
fn from_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Rejection> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    let value = T::deserialize(&mut de).map_err(|e| {
        use rmp_serde::decode::Error;
        let code = match &e {
            Error::TypeMismatch(_) => "wrong_type",
            Error::OutOfRange => "out_of_range",
            Error::Syntax(m) if m.starts_with("missing field") => "missing_field",
            Error::Syntax(m) if m.starts_with("invalid type") || m.starts_with("invalid value") => {
                "wrong_type"
            }
            _ => "undecodable",
        };
        Rejection::new(code, e.to_string())
    })?;
    if usize::try_from(de.get_ref().position()).ok() != Some(bytes.len()) {
        return Err(Rejection::new(
            "undecodable",
            "trailing bytes after the envelope",
        ));
    }
    Ok(value)
}

fn data<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Rejection> {
    from_msgpack::<WithData<T>>(bytes)
        .map(|w| w.data)
        .map_err(|r| Rejection {
            detail: format!("data: {}", r.detail),
            ..r
        })
}

fn out_of_range(detail: impl Into<String>) -> Rejection {
    Rejection::new("out_of_range", detail)
}

/// A display name as it is shown: without control characters, bidirectional controls
/// (which can make a name read backwards or hide text) and zero-width characters (which
/// make look-alikes of other names), trimmed. `None` when nothing is left.
pub fn clean_name(name: &str) -> Option<String> {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c,
                '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}' | '\u{200B}'..='\u{200D}' | '\u{2060}'
                | '\u{FEFF}' | '\u{180E}' | '\u{00AD}')
    };
    let cleaned: String = name.chars().filter(|c| !invisible(*c)).collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| cleaned.to_owned())
}

fn char_len_in(s: &str, field: &str, max: usize) -> Result<(), Rejection> {
    let n = s.chars().count();
    if (1..=max).contains(&n) {
        Ok(())
    } else {
        Err(out_of_range(format!(
            "{field} must be 1..={max} characters, got {n}"
        )))
    }
}

/// Validates one envelope received on the subject whose tokens are
/// `(subject_platform, subject_kind)`, at wall-clock time `now_ms`.
pub fn decode(
    bytes: &[u8],
    (subject_platform, subject_kind): (&str, &str),
    now_ms: i64,
) -> Result<Event, Rejection> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(Rejection::new(
            "oversized",
            format!("{} bytes, the limit is {MAX_EVENT_BYTES}", bytes.len()),
        ));
    }
    // A struct also decodes from a MessagePack array; the contract is a map.
    if !matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        return Err(Rejection::new(
            "undecodable",
            "the envelope is not a MessagePack map",
        ));
    }
    let head: Head = from_msgpack(bytes)?;
    if head.v != 1 {
        return Err(Rejection::new(
            "unknown_version",
            format!("v = {} is not supported", head.v),
        ));
    }
    let id = EventId::parse(&head.id)?;
    if head.ts < MIN_TS_MS || head.ts > now_ms.saturating_add(MAX_AHEAD_MS) {
        return Err(out_of_range(format!(
            "ts {} must be between 2015-01-01 and 24 h from now",
            head.ts
        )));
    }
    let platform = Platform::parse(&head.platform).map_err(|e| out_of_range(e.to_string()))?;
    let user = PlatformUser::parse(&head.user).map_err(|e| out_of_range(e.to_string()))?;
    if head.platform != subject_platform || head.kind != subject_kind {
        return Err(Rejection::new(
            "subject_mismatch",
            format!(
                "envelope says {}/{}, subject says {subject_platform}/{subject_kind}",
                head.platform, head.kind
            ),
        ));
    }
    if let Some(name) = &head.name {
        char_len_in(name, "name", 100)?;
    }
    let identity = Identity { platform, user };
    let payload = match head.kind.as_str() {
        "message" => {
            let d: MessageData = data(bytes)?;
            Payload::Message {
                len: d.len,
                chat: d.chat,
                mult: mult_in(d.mult)?,
            }
        }
        "voice" => {
            let d: VoiceData = data(bytes)?;
            Payload::Voice {
                seconds: voice_seconds_in(d.seconds)?,
                channel: d.channel,
                mult: mult_in(d.mult)?,
            }
        }
        "voice_unpaid" => {
            let d: VoiceUnpaidData = data(bytes)?;
            Payload::VoiceUnpaid {
                seconds: voice_seconds_in(d.seconds)?,
                why: Unpaid::parse(&d.why)?,
                channel: d.channel,
            }
        }
        "game" => {
            let d: GameData = data(bytes)?;
            char_len_in(&d.game, "data.game", 64)?;
            let xp = u32::try_from(d.xp)
                .ok()
                .filter(|x| *x <= 1_000_000)
                .ok_or_else(|| out_of_range(format!("data.xp {} must be 0..=1000000", d.xp)))?;
            Payload::Game {
                game: d.game,
                won: d.won,
                xp,
            }
        }
        "xp" => {
            let d: XpData = data(bytes)?;
            char_len_in(&d.reason, "data.reason", 64)?;
            let amount = i32::try_from(d.amount)
                .ok()
                .filter(|a| (-1_000_000..=1_000_000).contains(a))
                .ok_or_else(|| {
                    out_of_range(format!(
                        "data.amount {} must be -1000000..=1000000",
                        d.amount
                    ))
                })?;
            Payload::Xp {
                amount,
                reason: d.reason,
                by: by_in(d.by)?,
            }
        }
        "link" => {
            let d: LinkData = data(bytes)?;
            let other = Identity::new(&d.platform, &d.user)
                .map_err(|e| out_of_range(format!("data: {e}")))?;
            if other == identity {
                return Err(out_of_range("a link must name another identity"));
            }
            Payload::Link {
                other,
                proof: Proof::parse(&d.proof)?,
                by: by_in(d.by)?,
            }
        }
        "prefs" => {
            let d: PrefsData = data(bytes)?;
            Payload::Prefs {
                hidden: d.hidden,
                notify: d.notify,
            }
        }
        "unlink" => {
            let d: UnlinkData = data(bytes)?;
            char_len_in(&d.reason, "data.reason", 64)?;
            let other = Identity::new(&d.platform, &d.user)
                .map_err(|e| out_of_range(format!("data: {e}")))?;
            if other == identity {
                return Err(out_of_range("an unlink must name another identity"));
            }
            Payload::Unlink {
                other,
                reason: d.reason,
                by: by_in(d.by)?,
            }
        }
        "forget" => {
            let d: ForgetData = data(bytes)?;
            char_len_in(&d.reason, "data.reason", 64)?;
            Payload::Forget {
                reason: d.reason,
                by: by_in(d.by)?,
            }
        }
        other => {
            return Err(Rejection::new(
                "unknown_kind",
                format!(
                    "kind {other:?} is not one of message, voice, voice_unpaid, game, xp, \
                     link, prefs, unlink, forget"
                ),
            ));
        }
    };
    Ok(Event {
        id,
        ts: head.ts,
        identity,
        name: head.name.as_deref().and_then(clean_name),
        payload,
    })
}

#[derive(Serialize)]
struct Out<'a> {
    v: u8,
    id: &'a str,
    ts: i64,
    platform: &'a str,
    user: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    data: DataOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DataOut<'a> {
    Message {
        #[serde(skip_serializing_if = "Option::is_none")]
        len: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        chat: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mult: Option<u16>,
    },
    Voice {
        seconds: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mult: Option<u16>,
    },
    VoiceUnpaid {
        seconds: u32,
        why: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    },
    Game {
        game: &'a str,
        won: bool,
        xp: u32,
    },
    Xp {
        amount: i32,
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<ByOut<'a>>,
    },
    Link {
        platform: &'a str,
        user: &'a str,
        proof: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<ByOut<'a>>,
    },
    Prefs {
        #[serde(skip_serializing_if = "Option::is_none")]
        hidden: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        notify: Option<bool>,
    },
    Unlink {
        platform: &'a str,
        user: &'a str,
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<ByOut<'a>>,
    },
    Forget {
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<ByOut<'a>>,
    },
}

#[derive(Serialize)]
struct ByOut<'a> {
    platform: &'a str,
    user: &'a str,
}

impl<'a> ByOut<'a> {
    fn of(by: &'a Option<Identity>) -> Option<Self> {
        by.as_ref().map(|b| ByOut {
            platform: b.platform.as_str(),
            user: b.user.as_str(),
        })
    }
}

/// Encodes an event as the envelope (`to_vec_named`: a map with string keys).
pub fn encode(event: &Event) -> Vec<u8> {
    let data = match &event.payload {
        Payload::Message { len, chat, mult } => DataOut::Message {
            len: *len,
            chat: chat.as_deref(),
            mult: *mult,
        },
        Payload::Voice {
            seconds,
            channel,
            mult,
        } => DataOut::Voice {
            seconds: *seconds,
            channel: channel.as_deref(),
            mult: *mult,
        },
        Payload::VoiceUnpaid {
            seconds,
            why,
            channel,
        } => DataOut::VoiceUnpaid {
            seconds: *seconds,
            why: why.as_str(),
            channel: channel.as_deref(),
        },
        Payload::Game { game, won, xp } => DataOut::Game {
            game,
            won: *won,
            xp: *xp,
        },
        Payload::Xp { amount, reason, by } => DataOut::Xp {
            amount: *amount,
            reason,
            by: ByOut::of(by),
        },
        Payload::Link { other, proof, by } => DataOut::Link {
            platform: other.platform.as_str(),
            user: other.user.as_str(),
            proof: proof.as_str(),
            by: ByOut::of(by),
        },
        Payload::Prefs { hidden, notify } => DataOut::Prefs {
            hidden: *hidden,
            notify: *notify,
        },
        Payload::Unlink { other, reason, by } => DataOut::Unlink {
            platform: other.platform.as_str(),
            user: other.user.as_str(),
            reason,
            by: ByOut::of(by),
        },
        Payload::Forget { reason, by } => DataOut::Forget {
            reason,
            by: ByOut::of(by),
        },
    };
    let out = Out {
        v: 1,
        id: event.id.as_str(),
        ts: event.ts,
        platform: event.identity.platform.as_str(),
        user: event.identity.user.as_str(),
        kind: event.kind(),
        name: event.name.as_deref(),
        data,
    };
    // Serialising plain structs of strings and integers into a Vec cannot fail.
    rmp_serde::to_vec_named(&out).expect("an envelope always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_764_000_000_000;

    fn msgpack(v: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(v).expect("json values serialise")
    }

    fn base(kind: &str, data: serde_json::Value) -> serde_json::Value {
        json!({"v": 1, "id": "t:1", "ts": NOW - 1000, "platform": "discord", "user": "42",
               "kind": kind, "name": "Alice", "data": data})
    }

    fn code_of(v: &serde_json::Value, subject: (&str, &str)) -> &'static str {
        decode(&msgpack(v), subject, NOW)
            .expect_err("must be rejected")
            .code
    }

    #[test]
    fn every_kind_round_trips_through_the_envelope() {
        let samples = [
            base("message", json!({"len": 12, "chat": "general"})),
            base("message", json!({})),
            base("voice", json!({"seconds": 60, "channel": "lobby"})),
            base("game", json!({"game": "chess", "won": true, "xp": 50})),
            base("xp", json!({"amount": -20, "reason": "admin"})),
            base(
                "link",
                json!({"platform": "telegram", "user": "7", "proof": "code"}),
            ),
            base("message", json!({"len": 12, "mult": 0})),
            base("prefs", json!({"hidden": true})),
            base("prefs", json!({"notify": false, "hidden": false})),
            base("voice", json!({"seconds": 60, "mult": 1000})),
            base(
                "voice_unpaid",
                json!({"seconds": 45, "why": "muted", "channel": "lobby"}),
            ),
            base("voice_unpaid", json!({"seconds": 3600, "why": "afk"})),
            base(
                "xp",
                json!({"amount": 5, "reason": "quiz", "by": {"platform": "cli", "user": "ops"}}),
            ),
            base(
                "link",
                json!({"platform": "telegram", "user": "7", "proof": "admin",
                       "by": {"platform": "discord", "user": "9"}}),
            ),
            base(
                "unlink",
                json!({"platform": "telegram", "user": "7", "reason": "wrong person",
                       "by": {"platform": "cli", "user": "ops"}}),
            ),
            base(
                "unlink",
                json!({"platform": "telegram", "user": "7", "reason": "x"}),
            ),
            base("forget", json!({"reason": "the member asked"})),
            base(
                "forget",
                json!({"reason": "gdpr", "by": {"platform": "cli", "user": "ops"}}),
            ),
        ];
        for v in samples {
            let kind = v["kind"].as_str().expect("kind").to_owned();
            let ev = decode(&msgpack(&v), ("discord", &kind), NOW).expect("valid");
            assert_eq!(ev.kind(), kind);
            let again = decode(&encode(&ev), ("discord", &kind), NOW).expect("re-decodes");
            assert_eq!(again, ev);
        }
    }

    #[test]
    fn unknown_data_keys_are_ignored() {
        let v = base("voice", json!({"seconds": 5, "future": [1, 2]}));
        assert!(decode(&msgpack(&v), ("discord", "voice"), NOW).is_ok());
    }

    #[test]
    fn each_broken_rule_is_rejected_with_its_code() {
        let s = ("discord", "message");
        let mut v = base("message", json!({}));
        v["v"] = json!(2);
        assert_eq!(code_of(&v, s), "unknown_version");
        let mut v = base("message", json!({}));
        v.as_object_mut().expect("map").remove("ts");
        assert_eq!(code_of(&v, s), "missing_field");
        let mut v = base("message", json!({}));
        v["ts"] = json!("yesterday");
        assert_eq!(code_of(&v, s), "wrong_type");
        let mut v = base("message", json!({}));
        v["ts"] = json!(1_000);
        assert_eq!(code_of(&v, s), "out_of_range");
        let mut v = base("message", json!({}));
        v["ts"] = json!(NOW + 25 * 3_600_000);
        assert_eq!(code_of(&v, s), "out_of_range");
        let mut v = base("message", json!({}));
        v["id"] = json!("");
        assert_eq!(code_of(&v, s), "bad_id");
        let mut v = base("message", json!({}));
        v["id"] = json!("é");
        assert_eq!(code_of(&v, s), "bad_id");
        let mut v = base("message", json!({}));
        v["name"] = json!("x".repeat(101));
        assert_eq!(code_of(&v, s), "out_of_range");
        let v = base("message", json!({}));
        assert_eq!(code_of(&v, ("telegram", "message")), "subject_mismatch");
        let v = base("dance", json!({}));
        assert_eq!(code_of(&v, ("discord", "dance")), "unknown_kind");
        let v = base("voice", json!({"seconds": 0}));
        assert_eq!(code_of(&v, ("discord", "voice")), "out_of_range");
        let v = base("voice_unpaid", json!({"seconds": 30, "why": "bored"}));
        assert_eq!(code_of(&v, ("discord", "voice_unpaid")), "out_of_range");
        let v = base("voice_unpaid", json!({"seconds": 3601, "why": "alone"}));
        assert_eq!(code_of(&v, ("discord", "voice_unpaid")), "out_of_range");
        let v = base("voice_unpaid", json!({"seconds": 30}));
        assert_eq!(code_of(&v, ("discord", "voice_unpaid")), "missing_field");
        let v = base("voice", json!({"seconds": 3601}));
        assert_eq!(code_of(&v, ("discord", "voice")), "out_of_range");
        let v = base("voice", json!({}));
        assert_eq!(code_of(&v, ("discord", "voice")), "missing_field");
        let v = base("link", json!(["telegram", "7", "code"]));
        assert_eq!(
            code_of(&v, ("discord", "link")),
            "wrong_type",
            "data must be a map"
        );
        let mut v = base("message", json!({}));
        v.as_object_mut().expect("map").remove("data");
        assert_eq!(code_of(&v, s), "missing_field");
        let v = base("game", json!({"game": "chess", "won": "yes", "xp": 1}));
        assert_eq!(code_of(&v, ("discord", "game")), "wrong_type");
        let v = base(
            "game",
            json!({"game": "chess", "won": true, "xp": 1_000_001}),
        );
        assert_eq!(code_of(&v, ("discord", "game")), "out_of_range");
        let v = base("xp", json!({"amount": -1_000_001, "reason": "x"}));
        assert_eq!(code_of(&v, ("discord", "xp")), "out_of_range");
        let v = base("xp", json!({"amount": 5, "reason": ""}));
        assert_eq!(code_of(&v, ("discord", "xp")), "out_of_range");
        let v = base(
            "link",
            json!({"platform": "telegram", "user": "7", "proof": "trust-me"}),
        );
        assert_eq!(code_of(&v, ("discord", "link")), "out_of_range");
        let v = base(
            "link",
            json!({"platform": "discord", "user": "42", "proof": "code"}),
        );
        assert_eq!(code_of(&v, ("discord", "link")), "out_of_range");
        let v = base("prefs", json!({"notify": "no"}));
        assert_eq!(code_of(&v, ("discord", "prefs")), "wrong_type");
        let unlink = ("discord", "unlink");
        let v = base(
            "unlink",
            json!({"platform": "discord", "user": "42", "reason": "x"}),
        );
        assert_eq!(code_of(&v, unlink), "out_of_range", "not from itself");
        let v = base(
            "unlink",
            json!({"platform": "telegram", "user": "7", "reason": ""}),
        );
        assert_eq!(code_of(&v, unlink), "out_of_range");
        let v = base("unlink", json!({"platform": "telegram", "user": "7"}));
        assert_eq!(code_of(&v, unlink), "missing_field");
        let v = base("message", json!({"mult": 1001}));
        assert_eq!(code_of(&v, s), "out_of_range");
        let v = base("voice", json!({"seconds": 5, "mult": -1}));
        assert_eq!(code_of(&v, ("discord", "voice")), "wrong_type");
        let v = base("xp", json!({"amount": 5, "reason": "x", "by": "ops"}));
        assert_eq!(code_of(&v, ("discord", "xp")), "wrong_type");
        let v = base(
            "xp",
            json!({"amount": 5, "reason": "x", "by": {"platform": "CLI", "user": "ops"}}),
        );
        assert_eq!(code_of(&v, ("discord", "xp")), "out_of_range");
        let mut v = base("message", json!({}));
        v["platform"] = json!("Discord");
        assert_eq!(code_of(&v, ("Discord", "message")), "out_of_range");
    }

    #[test]
    fn non_maps_garbage_trailing_bytes_and_oversized_payloads_are_rejected() {
        let s = ("discord", "message");
        assert_eq!(
            decode(b"not msgpack", s, NOW).map_err(|r| r.code),
            Err("undecodable")
        );
        assert_eq!(decode(&[], s, NOW).map_err(|r| r.code), Err("undecodable"));
        let as_array = rmp_serde::to_vec(&(1, "id", NOW, "discord", "42", "message")).expect("enc");
        assert_eq!(
            decode(&as_array, s, NOW).map_err(|r| r.code),
            Err("undecodable")
        );
        let mut trailing = msgpack(&base("message", json!({})));
        trailing.push(0xc0);
        assert_eq!(
            decode(&trailing, s, NOW).map_err(|r| r.code),
            Err("undecodable")
        );
        let big = msgpack(&base(
            "message",
            json!({"chat": "x".repeat(MAX_EVENT_BYTES)}),
        ));
        assert_eq!(decode(&big, s, NOW).map_err(|r| r.code), Err("oversized"));
    }

    #[test]
    fn names_lose_invisible_and_direction_changing_characters() {
        assert_eq!(clean_name("Ann"), Some("Ann".into()));
        assert_eq!(clean_name("  Ann \u{200B}"), Some("Ann".into()));
        // "admin" written backwards and shown forwards by a right-to-left override.
        assert_eq!(clean_name("\u{202E}nimda"), Some("nimda".into()));
        assert_eq!(
            clean_name("A\u{200D}n\u{FEFF}n\u{2067}"),
            Some("Ann".into())
        );
        assert_eq!(clean_name("Zoë 🎮 李"), Some("Zoë 🎮 李".into()));
        assert_eq!(clean_name("\u{200B}\u{202E} "), None);
        let mut v = base("message", json!({}));
        v["name"] = json!("\u{202E}\u{200B}");
        let e = decode(&msgpack(&v), ("discord", "message"), NOW).expect("valid");
        assert_eq!(e.name, None, "a name of nothing visible is no name");
    }
}
