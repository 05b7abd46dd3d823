use proptest::prelude::*;

use super::*;
use crate::arbitrary::{EPOCH_MS, delivery, event_set};
use crate::wire::{EventId, Proof};

const DAY: i64 = rules::DAY_MS;

fn ev(id: &str, ts: i64, who: &str, payload: Payload) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts: EPOCH_MS + ts,
        identity: Identity::parse(who).expect("identity"),
        name: None,
        payload,
    }
}

fn msg(len: Option<u64>) -> Payload {
    Payload::Message {
        len,
        chat: None,
        mult: None,
    }
}

fn grant(amount: i32) -> Payload {
    Payload::Xp {
        amount,
        reason: "t".into(),
        by: None,
    }
}

fn link(other: &str) -> Payload {
    Payload::Link {
        other: Identity::parse(other).expect("identity"),
        proof: Proof::Code,
        by: None,
    }
}

fn unlink(other: &str) -> Payload {
    Payload::Unlink {
        other: Identity::parse(other).expect("identity"),
        reason: "wrong person".into(),
        by: None,
    }
}

/// The profile of `who` among `profiles`.
fn of<'p>(profiles: &'p [Profile], who: &str) -> &'p Profile {
    let who = Identity::parse(who).expect("identity");
    profiles
        .iter()
        .find(|p| p.identities.contains(&who))
        .expect("a profile")
}

/// SPEC 7.4: an unlink takes back every link between its two identities up to its
/// time, in any order of arrival; users are the components of the links that count,
/// each part with what its identities earned. A later link joins them again.
#[test]
fn an_unlink_splits_a_user_into_the_components_of_the_links_left() {
    let r = Rules::default();
    let events = [
        ev("m1", 1_000, "discord:1", msg(None)),
        ev("m2", 61_000, "telegram:2", msg(None)),
        ev("m3", 121_000, "website:3", msg(None)),
        ev("l12", 200_000, "discord:1", link("telegram:2")),
        ev("l23", 210_000, "telegram:2", link("website:3")),
        ev("u", 300_000, "website:3", unlink("telegram:2")),
    ];
    for order in [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 5, 0, 4, 1, 3]] {
        let shuffled: Vec<Event> = order.iter().map(|i| events[*i].clone()).collect();
        let p = fold(&r, &shuffled);
        assert_eq!(p.len(), 2, "{order:?}: {p:#?}");
        assert_eq!(of(&p, "discord:1").identities.len(), 2);
        assert_eq!(
            (of(&p, "discord:1").xp, of(&p, "discord:1").messages),
            (20, 2)
        );
        assert_eq!(
            (of(&p, "website:3").xp, of(&p, "website:3").messages),
            (10, 1)
        );
        // The unlink is no activity of the member it names.
        assert_eq!(of(&p, "website:3").last_ts, Some(EPOCH_MS + 121_000));
    }
    // A link after the cut counts; one before it (arriving late) does not.
    let mut later = events.to_vec();
    later.push(ev("again", 400_000, "website:3", link("telegram:2")));
    assert_eq!(fold(&r, &later).len(), 1);
    let mut earlier = events.to_vec();
    earlier.push(ev("old", 250_000, "website:3", link("telegram:2")));
    assert_eq!(fold(&r, &earlier).len(), 2);
    // The audit log keeps the unlink, with its reason.
    let log = audit(&events);
    assert_eq!(log[0].kind, "unlink");
    assert_eq!(log[0].reason.as_deref(), Some("wrong person"));
}

/// SPEC 7.4, peaks: a part's peak is in event time over its own history, as if the
/// link taken back had never been made.
#[test]
fn an_unlinked_part_keeps_only_the_peak_its_own_history_reached() {
    let r = Rules::default();
    let big = r.rank(3).required_xp;
    let events = [
        ev(
            "g1",
            0,
            "discord:1",
            grant(i32::try_from(big).expect("small")),
        ),
        ev("g2", 0, "telegram:2", grant(10)),
        ev("l", 1_000, "telegram:2", link("discord:1")),
        ev(
            "take",
            2 * DAY,
            "discord:1",
            grant(-i32::try_from(big).expect("small")),
        ),
        ev("u", 3 * DAY, "discord:1", unlink("telegram:2")),
    ];
    let p = fold(&r, &events);
    assert_eq!(of(&p, "discord:1").peak_rank, 3);
    assert_eq!(of(&p, "telegram:2").peak_rank, 1, "never held rank 3 alone");
}

fn forget() -> Payload {
    Payload::Forget {
        reason: "the member asked".into(),
        by: None,
    }
}

/// SPEC 7.4, erasure: every event of the identity up to the cut, its name and the links
/// naming it count for nothing, in any order; its later events start over; the audit
/// keeps nothing of it.
#[test]
fn a_forget_erases_everything_up_to_its_cut_and_later_events_start_over() {
    let r = Rules::default();
    let named = |id: &str, ts: i64, who: &str, name: &str, payload: Payload| Event {
        name: Some(name.into()),
        ..ev(id, ts, who, payload)
    };
    let events = [
        named("m1", 1_000, "telegram:2", "Tess", msg(None)),
        ev("g1", 2_000, "telegram:2", grant(500)),
        ev("m0", 3_000, "discord:1", msg(None)),
        ev("l", 4_000, "discord:1", link("telegram:2")),
        ev("f", 10_000, "telegram:2", forget()),
        named("m2", 70_000, "telegram:2", "T", msg(None)),
    ];
    for order in [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [4, 0, 5, 2, 3, 1]] {
        let shuffled: Vec<Event> = order.iter().map(|i| events[*i].clone()).collect();
        let p = fold(&r, &shuffled);
        assert_eq!(p.len(), 2, "{order:?}: {p:#?}");
        let d = of(&p, "discord:1");
        assert_eq!((d.xp, d.identities.len()), (10, 1), "the link is gone");
        let t = of(&p, "telegram:2");
        assert_eq!(
            (t.xp, t.messages),
            (10, 1),
            "only the message after the cut"
        );
        assert_eq!(t.display_name.as_deref(), Some("T"));
        assert_eq!(t.first_ts, Some(EPOCH_MS + 70_000));
    }
    assert!(audit(&events).is_empty(), "the grant's entry is erased");
    // Nothing after the cut: no trace at all.
    let p = fold(&r, &events[..5]);
    assert_eq!(p.len(), 1);
}

fn only(profiles: &[Profile]) -> &Profile {
    assert_eq!(profiles.len(), 1, "{profiles:#?}");
    &profiles[0]
}

#[test]
fn first_eligible_message_of_a_minute_earns_xp_and_the_rest_only_count() {
    let r = Rules::default();
    let events = [
        ev("a", 1_000, "discord:1", msg(Some(2))),
        ev("b", 2_000, "discord:1", msg(Some(20))),
        ev("c", 3_000, "discord:1", msg(None)),
        ev("d", 61_000, "discord:1", msg(None)),
    ];
    let p = fold(&r, &events);
    let p = only(&p);
    assert_eq!((p.xp, p.messages), (20, 4));
}

fn boosted(len: Option<u64>, mult: u16) -> Payload {
    Payload::Message {
        len,
        chat: None,
        mult: Some(mult),
    }
}

/// SPEC 7.2: a minute pays at the largest `mult` of its eligible messages, whichever
/// arrives first; counters count every message.
#[test]
fn a_minute_pays_at_the_largest_mult_of_its_eligible_messages() {
    let r = Rules::default();
    let minute = [
        ev("plain", 1_000, "discord:1", msg(None)),
        ev("double", 2_000, "discord:1", boosted(None, 200)),
        ev("half", 3_000, "discord:1", boosted(None, 50)),
        ev("short", 4_000, "discord:1", boosted(Some(1), 1000)),
    ];
    for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
        let events: Vec<Event> = order.iter().map(|i| minute[*i].clone()).collect();
        let p = fold(&r, &events);
        assert_eq!((only(&p).xp, only(&p).messages), (20, 4), "{order:?}");
    }
    let quiet = [
        ev("a", 1_000, "discord:1", boosted(None, 0)),
        ev("b", 61_000, "discord:1", boosted(None, 150)),
        ev("c", 121_000, "discord:1", boosted(None, 33)),
    ];
    let p = fold(&r, &quiet);
    assert_eq!((only(&p).xp, only(&p).messages), (15 + 3, 3));
}

/// SPEC 7.3: per field the newest `prefs` event wins, in any order; a user is hidden
/// when any identity is and notified unless one said no; prefs pay nothing.
#[test]
fn preferences_are_the_newest_per_field_and_join_across_identities() {
    let r = Rules::default();
    let prefs = |hidden: Option<bool>, notify: Option<bool>| Payload::Prefs { hidden, notify };
    let events = [
        ev("p1", 1_000, "discord:1", prefs(Some(true), Some(false))),
        ev("p2", 2_000, "discord:1", prefs(Some(false), None)),
        ev("p3", 2_000, "discord:1", prefs(None, Some(true))),
        ev("p0", 500, "discord:1", prefs(Some(true), Some(false))),
    ];
    for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]] {
        let shuffled: Vec<Event> = order.iter().map(|i| events[*i].clone()).collect();
        let p = fold(&r, &shuffled);
        let p = only(&p);
        assert_eq!((p.hidden, p.notify, p.xp), (false, true, 0), "{order:?}");
    }
    let joined = [
        ev("a", 1_000, "discord:1", prefs(Some(true), None)),
        ev("b", 1_000, "telegram:1", prefs(None, Some(false))),
        ev("l", 5_000, "discord:1", link("telegram:1")),
    ];
    let p = fold(&r, &joined);
    assert_eq!((only(&p).hidden, only(&p).notify), (true, false));
    let p = fold(&r, &[ev("m", 1_000, "discord:1", msg(None))]);
    assert_eq!(
        (only(&p).hidden, only(&p).notify),
        (false, true),
        "the defaults"
    );
}

#[test]
fn voice_pays_its_mult_in_percent_rounded_down() {
    let r = Rules::default();
    let voice = |id: &str, seconds: u32, mult: Option<u16>| {
        ev(
            id,
            0,
            "discord:1",
            Payload::Voice {
                seconds,
                channel: None,
                mult,
            },
        )
    };
    let p = fold(&r, &[voice("a", 3600, Some(150)), voice("b", 59, None)]);
    // 3600 s * 4 XP/min * 150 % = 360; 59 s * 4 / 60 = 3.
    assert_eq!(only(&p).xp, 360 + 3);
    let p = fold(&r, &[voice("c", 3600, Some(0)), voice("d", 100, Some(7))]);
    assert_eq!((only(&p).xp, only(&p).voice_seconds), (0, 3700));
}

#[test]
fn buckets_are_per_identity_so_a_merge_keeps_both_minutes_xp() {
    let r = Rules::default();
    let events = [
        ev("a", 1_000, "discord:1", msg(None)),
        ev("b", 1_000, "telegram:1", msg(None)),
        ev("l", 5_000, "discord:1", link("telegram:1")),
    ];
    let p = fold(&r, &events);
    assert_eq!(only(&p).xp, 20);
}

#[test]
fn merging_sums_xp_counters_and_ledgers_and_recomputes_rank() {
    let r = Rules::default();
    let events = [
        ev(
            "v",
            0,
            "discord:1",
            Payload::Voice {
                seconds: 3600,
                channel: None,
                mult: None,
            },
        ),
        ev(
            "g",
            DAY,
            "telegram:9",
            Payload::Game {
                game: "q".into(),
                won: true,
                xp: 300,
            },
        ),
        ev("l", 2 * DAY, "telegram:9", link("discord:1")),
    ];
    let p = fold(&r, &events);
    let p = only(&p);
    assert_eq!(p.xp, 240 + 300);
    assert_eq!((p.voice_seconds, p.games_played, p.games_won), (3600, 1, 1));
    assert_eq!((p.rank, p.peak_rank, p.coins), (2, 2, 50));
    assert_eq!(p.ledger.len(), 2);
    assert_eq!(p.first_ts, Some(EPOCH_MS));
    assert_eq!(p.last_ts, Some(EPOCH_MS + 2 * DAY));
}

#[test]
fn peak_rank_remembers_a_rank_held_at_a_day_close_after_a_deduction() {
    let r = Rules::default();
    let events = [
        ev("up", 0, "discord:1", grant(2_300)),
        ev("down", DAY, "discord:1", grant(-2_000)),
    ];
    let p = fold(&r, &events);
    let p = only(&p);
    assert_eq!((p.xp, p.rank, p.peak_rank), (300, 1, 4));
    assert_eq!(p.coins, 50 + 100 + 150);
}

#[test]
fn a_deduction_on_the_same_day_means_the_rank_was_never_held() {
    let r = Rules::default();
    let events = [
        ev("up", 0, "discord:1", grant(2_300)),
        ev("down", 10, "discord:1", grant(-2_000)),
    ];
    let p = fold(&r, &events);
    assert_eq!(only(&p).peak_rank, 1);
}

#[test]
fn a_merge_keeps_the_higher_peak_of_the_two_users() {
    let r = Rules::default();
    let events = [
        ev("up", 0, "discord:1", grant(600)),
        ev("down", DAY, "discord:1", grant(-600)),
        ev("neg", 0, "telegram:1", grant(-600)),
        ev("l", 3 * DAY, "telegram:1", link("discord:1")),
    ];
    let p = fold(&r, &events);
    let p = only(&p);
    assert_eq!((p.xp, p.rank, p.peak_rank), (-600, 1, 2));
}

#[test]
fn display_name_is_the_newest_named_event_across_identities() {
    let r = Rules::default();
    let mut a = ev("a", 1_000, "discord:1", msg(None));
    a.name = Some("Old".into());
    let mut b = ev("b", 2_000, "telegram:1", msg(None));
    b.name = Some("New".into());
    let mut c = ev("c", 2_000, "discord:1", msg(None));
    c.name = Some("Tie-loser".into());
    let l = ev("l", 3_000, "discord:1", link("telegram:1"));
    let p = fold(&r, &[a, b, c, l]);
    // Same ts: the larger id wins, "c" > "b".
    assert_eq!(only(&p).display_name.as_deref(), Some("Tie-loser"));
}

#[test]
fn a_link_to_an_unknown_identity_creates_it() {
    let r = Rules::default();
    let p = fold(&r, &[ev("l", 0, "discord:1", link("website:x@y"))]);
    assert_eq!(only(&p).identities.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fold_depends_only_on_the_set_of_distinct_events(
        (events, delivered) in event_set(60, 8, true)
            .prop_flat_map(|e| (Just(e.clone()), delivery(e)))
    ) {
        let r = Rules::default();
        prop_assert_eq!(fold(&r, &events), fold(&r, &delivered));
    }

    #[test]
    fn totals_are_conserved_and_peak_is_at_least_rank(events in event_set(60, 8, true)) {
        let r = Rules::default();
        let users = fold(&r, &events);
        let identities: usize = users.iter().map(|u| u.identities.len()).sum();
        // Every identity of an event that counts (SPEC 7.4): an unlink and the links it
        // takes back bring none.
        let cuts = Cuts::of(&events);
        let distinct: BTreeSet<_> = events.iter()
            .filter(|e| cuts.counts(e) && !["unlink", "forget"].contains(&e.kind()))
            .flat_map(|e| {
                let mut v = vec![e.identity.clone()];
                if let Payload::Link { other, .. } = &e.payload { v.push(other.clone()); }
                v
            }).collect();
        prop_assert_eq!(identities, distinct.len());
        let messages = events.iter().filter(|e| e.kind() == "message" && cuts.counts(e)).count() as i64;
        prop_assert_eq!(users.iter().map(|u| u.messages).sum::<i64>(), messages);
        for u in &users {
            prop_assert!(u.peak_rank >= u.rank);
            prop_assert_eq!(u.xp, u.ledger.values().sum::<i64>());
        }
    }

    #[test]
    fn without_deductions_peak_rank_equals_rank(events in event_set(60, 8, false)) {
        let r = Rules::default();
        for u in fold(&r, &events) {
            prop_assert_eq!(u.peak_rank, u.rank);
        }
    }
}

#[test]
fn generated_event_times_span_two_weeks_and_two_months() {
    use crate::view::Period;
    let first = crate::rules::date_of_day(crate::rules::day_of(EPOCH_MS));
    let last = crate::rules::date_of_day(crate::rules::day_of(EPOCH_MS + 4 * DAY - 1));
    assert_eq!(first, time::macros::date!(2026 - 02 - 27));
    let none = crate::seasons::Seasons::default();
    assert_ne!(
        Period::Week.key(first, &none),
        Period::Week.key(last, &none)
    );
    assert_ne!(
        Period::Month.key(first, &none),
        Period::Month.key(last, &none)
    );
}

#[test]
fn standings_rank_every_user_all_time_and_those_with_xp_in_a_period() {
    let rules = Rules::default();
    // Ann earns in February and loses it again in March; Bo earns only in March.
    let events = [
        ev("a1", 0, "discord:ann", grant(500)),
        ev("a2", 2 * DAY, "discord:ann", grant(-500)),
        ev("b1", 3 * DAY, "telegram:bo", grant(70)),
    ];
    let profiles = fold(&rules, &events);
    // A season from March 1: Ann's minus and Bo's plus.
    let seasons = crate::seasons::Seasons::new(vec![
        crate::seasons::Season::parse("s1", "2026-03-01", "2026-03-31").expect("a season"),
    ])
    .expect("valid");
    let keys = |key: &str| -> Vec<(String, i64)> {
        standings(&profiles, key, &seasons)
            .into_iter()
            .map(|(p, xp)| (p.identities.first().expect("an identity").to_string(), xp))
            .collect()
    };
    assert_eq!(
        keys("all"),
        vec![
            ("telegram:bo".to_owned(), 70),
            ("discord:ann".to_owned(), 0)
        ]
    );
    assert_eq!(keys("month:2026-02"), vec![("discord:ann".to_owned(), 500)]);
    assert_eq!(
        keys("month:2026-03"),
        vec![
            ("telegram:bo".to_owned(), 70),
            ("discord:ann".to_owned(), -500)
        ]
    );
    // Ann's week (Feb 23 - Mar 1) sums to zero: she is not ranked in it.
    assert_eq!(keys("week:2026-W09"), Vec::<(String, i64)>::new());
    assert_eq!(keys("week:2026-W10"), vec![("telegram:bo".to_owned(), 70)]);
    assert_eq!(keys("season:s1"), keys("month:2026-03"));
    assert_eq!(keys("season:s0"), Vec::<(String, i64)>::new());
}
