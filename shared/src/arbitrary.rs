//! Proptest strategies for random sets of valid events over a small pool of identities,
//! dense enough in time that message buckets collide, days repeat and links merge users
//! that already have activity. Enabled by the `arbitrary` feature.

use proptest::prelude::*;

use crate::Identity;
use crate::wire::{Event, EventId, Payload, Proof, Unpaid};

/// 2026-02-27T00:00:00Z, a Friday: the start of generated event times. Their four days
/// end one month and one ISO week and start the next (March 1st is a Sunday, the 2nd a
/// Monday), so the leaderboards of both roll over.
pub const EPOCH_MS: i64 = 1_772_150_400_000;

fn identity(pool: usize) -> impl Strategy<Value = Identity> {
    (0..pool).prop_map(|i| {
        let platform = ["discord", "telegram", "website", "minecraft"][i % 4];
        Identity::new(platform, &format!("u{i}")).expect("generated identities are valid")
    })
}

/// `data.mult` (SPEC 7.2): mostly absent, else a value that raises, lowers or voids a
/// minute, 100 (the same as absent) and the largest.
fn mult() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![
        3 => Just(None),
        1 => prop::sample::select(vec![0u16, 50, 100, 150, 200, 1000]).prop_map(Some),
    ]
}

fn payload(pool: usize, allow_negative: bool) -> impl Strategy<Value = Payload> {
    let min_amount = if allow_negative { -3_000 } else { 0 };
    prop_oneof![
        6 => (proptest::option::of(0u64..12), mult())
            .prop_map(|(len, mult)| Payload::Message { len, chat: None, mult }),
        2 => (1u32..=3600, mult())
            .prop_map(|(seconds, mult)| Payload::Voice { seconds, channel: None, mult }),
        1 => (1u32..=3600, prop::sample::select(Unpaid::ALL.to_vec()))
            .prop_map(|(seconds, why)| Payload::VoiceUnpaid { seconds, why, channel: None }),
        1 => (0u32..600, any::<bool>()).prop_map(|(xp, won)| Payload::Game {
            game: "quiz".into(),
            won,
            xp
        }),
        1 => (min_amount..3_000i32, proptest::option::of(identity(pool))).prop_map(
            |(amount, by)| Payload::Xp {
                amount,
                reason: "test".into(),
                by,
            }
        ),
        1 => identity(pool).prop_map(|other| Payload::Link {
            other,
            proof: Proof::Code,
            by: None
        }),
        1 => (proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>()))
            .prop_map(|(hidden, notify)| Payload::Prefs { hidden, notify }),
        1 => (identity(pool), proptest::option::of(identity(pool))).prop_map(|(other, by)| {
            Payload::Unlink {
                other,
                reason: "test".into(),
                by,
            }
        }),
        1 => proptest::option::of(identity(pool)).prop_map(|by| Payload::Forget {
            reason: "test".into(),
            by,
        }),
    ]
}

/// One event with a unique id `<tag>:<n>`; links and unlinks to the sender itself are
/// turned into messages, since the wire refuses them.
pub fn event(n: usize, pool: usize, allow_negative: bool) -> impl Strategy<Value = Event> {
    (
        identity(pool),
        payload(pool, allow_negative),
        // Four days, minute-dense: buckets collide and days repeat.
        0i64..4 * 86_400,
        proptest::option::of(prop_oneof![
            Just("Ann"),
            Just("Bo"),
            Just("Cy"),
            Just("\u{202E}Cy\u{200B}"),
            Just("\u{200B}")
        ]),
    )
        .prop_map(move |(identity, payload, secs, name)| {
            let payload = match payload {
                Payload::Link { other, .. } | Payload::Unlink { other, .. }
                    if other == identity =>
                {
                    Payload::Message {
                        len: None,
                        chat: None,
                        mult: None,
                    }
                }
                p => p,
            };
            Event {
                id: EventId::parse(&format!("gen:{n}")).expect("generated ids are valid"),
                ts: EPOCH_MS + secs * 1000 / 97 * 97,
                identity,
                name: name.map(str::to_owned),
                payload,
            }
        })
}

/// A set of up to `max` distinct events over `pool` identities.
pub fn event_set(
    max: usize,
    pool: usize,
    allow_negative: bool,
) -> impl Strategy<Value = Vec<Event>> {
    (0..=max).prop_flat_map(move |len| {
        (0..len)
            .map(|n| event(n, pool, allow_negative))
            .collect::<Vec<_>>()
    })
}

/// The same set delivered as a broker would: shuffled, with some events repeated.
pub fn delivery(events: Vec<Event>) -> impl Strategy<Value = Vec<Event>> {
    let len = events.len();
    proptest::collection::vec(0..len.max(1), 0..=len / 2 + 1).prop_flat_map(move |dups| {
        let mut all = events.clone();
        all.extend(dups.into_iter().filter_map(|i| events.get(i).cloned()));
        Just(all).prop_shuffle()
    })
}
