//! Link codes and the query service, against real PostgreSQL and NATS: codes expire,
//! are used once even under a race, limit wrong attempts, and a redeemed code merges two
//! profiles through the normal pipeline.

use std::time::Duration;

use crate::common::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;
use ttfd::query::{QueryClient, QueryError, Reply};
use ttfd::shared::view::Period;
use ttfd::shared::wire::{EventId, WireIdentity};
use ttfd::shared::{Event, Identity, Payload};
use ttfd::store::codes::{self, LinkCode, Redemption};

fn who(s: &str) -> Identity {
    Identity::parse(s).expect("identity")
}

fn wire(s: &str) -> WireIdentity {
    (&who(s)).into()
}

fn message(id: &str, identity: &str, name: &str, ts: i64) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts,
        identity: who(identity),
        name: Some(name.into()),
        payload: Payload::Message {
            len: Some(40),
            chat: None,
            mult: None,
        },
    }
}

#[tokio::test]
async fn a_code_works_for_ten_minutes_and_then_no_more() {
    let env = TestEnv::new().await;
    let t = ttfd::now_ms();
    let code = env
        .store
        .issue_link_code(&who("discord:1"), t)
        .await
        .expect("issue");
    assert_eq!(code.expires_ms, t + codes::LIFETIME_MS);
    assert!(LinkCode::parse(&code.code).is_some(), "{}", code.code);
    let late = env
        .store
        .redeem_link_code(&who("telegram:2"), &code.code, code.expires_ms)
        .await
        .expect("redeem");
    assert_eq!(late, Redemption::Invalid);
    let in_time = env
        .store
        .redeem_link_code(
            &who("telegram:2"),
            &code.code.to_lowercase(),
            code.expires_ms - 1,
        )
        .await
        .expect("redeem");
    assert_eq!(
        in_time,
        Redemption::Linked {
            issuer: wire("discord:1")
        }
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_code_is_used_once_when_many_redeemers_race() {
    let env = TestEnv::new().await;
    let t = ttfd::now_ms();
    let code = env
        .store
        .issue_link_code(&who("discord:1"), t)
        .await
        .expect("issue");
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = env.store.clone();
            let code = code.code.clone();
            tokio::spawn(async move {
                store
                    .redeem_link_code(&who(&format!("telegram:{i}")), &code, t + 1)
                    .await
                    .expect("redeem")
            })
        })
        .collect();
    let mut linked = 0;
    for r in racers {
        match r.await.expect("task") {
            Redemption::Linked { issuer } => {
                assert_eq!(issuer, wire("discord:1"));
                linked += 1;
            }
            Redemption::Invalid => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(linked, 1);
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'event'")
        .fetch_one(&env.store.pool)
        .await
        .expect("count");
    assert_eq!(queued, 1, "one link event for the one winner");
    env.cleanup().await;
}

#[tokio::test]
async fn wrong_codes_are_limited_per_redeemer_for_a_window() {
    let env = TestEnv::new().await;
    let t = ttfd::now_ms();
    let code = env
        .store
        .issue_link_code(&who("discord:1"), t)
        .await
        .expect("issue");
    let guesser = who("telegram:9");
    for guess in ["AAAAAA", "BBBBBB", "not a code", "CCCCCC", "DDDDDD"] {
        let r = env
            .store
            .redeem_link_code(&guesser, guess, t + 1)
            .await
            .expect("redeem");
        assert_eq!(r, Redemption::Invalid, "{guess}");
    }
    // The right code no longer helps the guesser within the window (it opened with the
    // first failure, at t + 1)...
    let r = env
        .store
        .redeem_link_code(&guesser, &code.code, t + 60_000)
        .await
        .expect("redeem");
    assert_eq!(
        r,
        Redemption::TooManyAttempts {
            retry_after_secs: 541
        }
    );
    // ...other people are not affected...
    let other = env
        .store
        .issue_link_code(&who("discord:2"), t)
        .await
        .expect("issue");
    let r = env
        .store
        .redeem_link_code(&who("telegram:3"), &other.code, t + 60_000)
        .await
        .expect("redeem");
    assert!(matches!(r, Redemption::Linked { .. }), "{r:?}");
    // ...and after the window the guesser may try again (with a fresh code: the first
    // one has expired by then).
    let later = t + codes::FAILURE_WINDOW_MS + 1;
    let fresh = env
        .store
        .issue_link_code(&who("discord:1"), later)
        .await
        .expect("issue");
    let r = env
        .store
        .redeem_link_code(&guesser, &fresh.code, later + 1)
        .await
        .expect("redeem");
    assert!(matches!(r, Redemption::Linked { .. }), "{r:?}");
    env.cleanup().await;
}

/// A guesser who makes up a new redeemer for every guess gets around the per-redeemer
/// limit, but not around the limit on everyone's wrong codes together.
#[tokio::test]
async fn wrong_codes_from_many_made_up_redeemers_hit_a_global_limit() {
    let env = TestEnv::new().await;
    let t = ttfd::now_ms();
    let code = env
        .store
        .issue_link_code(&who("discord:1"), t)
        .await
        .expect("issue");
    for n in 0..codes::GLOBAL_MAX_FAILURES {
        let made_up = who(&format!("telegram:{}", 1000 + n));
        let r = env
            .store
            .redeem_link_code(&made_up, "AAAAAA", t + 1)
            .await
            .expect("redeem");
        assert_eq!(r, Redemption::Invalid, "guess {n}");
    }
    let r = env
        .store
        .redeem_link_code(&who("telegram:5"), &code.code, t + 2)
        .await
        .expect("redeem");
    assert!(matches!(r, Redemption::TooManyAttempts { .. }), "{r:?}");
    // After the window, redemptions work again.
    let later = t + codes::FAILURE_WINDOW_MS + 1;
    let fresh = env
        .store
        .issue_link_code(&who("discord:1"), later)
        .await
        .expect("issue");
    let r = env
        .store
        .redeem_link_code(&who("telegram:5"), &fresh.code, later + 1)
        .await
        .expect("redeem");
    assert!(matches!(r, Redemption::Linked { .. }), "{r:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn self_links_are_refused_and_a_code_issued_again_replaces_the_old_one() {
    let env = TestEnv::new().await;
    let t = ttfd::now_ms();
    let me = who("discord:1");
    let first = env.store.issue_link_code(&me, t).await.expect("issue");
    let r = env
        .store
        .redeem_link_code(&me, &first.code, t + 1)
        .await
        .expect("redeem");
    assert_eq!(r, Redemption::SelfLink);
    let second = env.store.issue_link_code(&me, t + 2).await.expect("issue");
    let r = env
        .store
        .redeem_link_code(&who("telegram:2"), &first.code, t + 3)
        .await
        .expect("redeem");
    assert_eq!(r, Redemption::Invalid, "the first code was replaced");
    let r = env
        .store
        .redeem_link_code(&who("telegram:2"), &second.code, t + 4)
        .await
        .expect("redeem");
    assert!(matches!(r, Redemption::Linked { .. }), "{r:?}");
    env.cleanup().await;
}

/// The whole path: bots ask the query service, the redeemed code becomes a `link` event
/// on the stream (through the outbox relay), the sync consumer merges the profiles, and
/// a second redemption is answered "already one user".
#[tokio::test]
async fn a_redeemed_code_merges_two_profiles_through_the_pipeline() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let relay = env.spawn_relay(stop.clone());
    let service = tokio::spawn(ttfd::query::serve(
        env.store.clone(),
        env.broker.clone(),
        stop.clone(),
    ));
    let client = QueryClient::new(
        env.broker.client.clone(),
        &env.settings.nats.prefix,
        Duration::from_secs(5),
    );
    let now = ttfd::now_ms();
    env.publish(&[
        message("d:1", "discord:10", "Ann on Discord", now - 120_000),
        message("t:1", "telegram:20", "Ann on Telegram", now - 60_000),
    ])
    .await;
    let (discord, telegram) = (who("discord:10"), who("telegram:20"));
    let (a, b) = eventually("both profiles", || async {
        let a = client.profile(&discord).await.ok()??;
        let b = client.profile(&telegram).await.ok()??;
        Some((a, b))
    })
    .await;
    assert_ne!(a.uid, b.uid);
    let xp = env.settings.rules.message_xp;
    assert_eq!(a.xp, xp);

    let code = client.issue_link_code(&discord).await.expect("issue");
    let r = client
        .redeem_link_code(&telegram, &code.code)
        .await
        .expect("redeem");
    assert_eq!(
        r,
        Redemption::Linked {
            issuer: wire("discord:10")
        }
    );
    let merged = eventually("the merge", || async {
        let p = client.profile(&telegram).await.ok()??;
        (p.identities.len() == 2).then_some(p)
    })
    .await;
    assert_eq!(merged.uid, a.uid.min(b.uid));
    assert_eq!(merged.xp, 2 * xp);
    // The leaderboards follow within a refresh round.
    let top = eventually("one user on the leaderboard", || async {
        let top = client.top(Period::All, 10, 0).await.ok()?;
        (top.len() == 1).then_some(top)
    })
    .await;
    assert_eq!(top[0].uid, merged.uid);
    let merged = client.profile(&telegram).await.expect("profile");
    assert_eq!(client.profile(&discord).await.expect("profile"), merged);
    let merged = merged.expect("merged");
    assert_eq!(merged.standings[0].position, Some(1));

    let again = client.issue_link_code(&discord).await.expect("issue");
    let r = client
        .redeem_link_code(&telegram, &again.code)
        .await
        .expect("redeem");
    assert_eq!(
        r,
        Redemption::AlreadyOneUser {
            issuer: wire("discord:10")
        }
    );
    assert_eq!(
        client.profile(&who("website:nobody")).await.expect("ok"),
        None
    );

    stop.cancel();
    worker.await.expect("worker");
    relay.await.expect("relay");
    service.await.expect("service").expect("served");
    env.cleanup().await;
}

#[tokio::test]
async fn bad_queries_get_an_error_reply_and_no_service_means_unavailable() {
    let env = TestEnv::new().await;
    let client = QueryClient::new(
        env.broker.client.clone(),
        &env.settings.nats.prefix,
        Duration::from_millis(500),
    );
    let r = client.profile(&who("discord:1")).await;
    assert!(matches!(r, Err(QueryError::Unavailable(_))), "{r:?}");

    let stop = CancellationToken::new();
    let service = tokio::spawn(ttfd::query::serve(
        env.store.clone(),
        env.broker.clone(),
        stop.clone(),
    ));
    let subjects = &env.broker.subjects;
    let ask = async |what: &str, body: Vec<u8>| -> Reply<serde::de::IgnoredAny> {
        let reply = eventually("a reply", || async {
            env.broker
                .client
                .request(subjects.query(what), body.clone().into())
                .await
                .ok()
        })
        .await;
        rmp_serde::from_slice(&reply.payload).expect("a reply")
    };
    let garbage = ask("profile", b"\xc1 not msgpack".to_vec()).await;
    assert!(
        matches!(&garbage, Reply::Error(e) if e.starts_with("request:")),
        "{garbage:?}"
    );
    let bad_identity = rmp_serde::to_vec_named(&ttfd::query::ProfileRequest {
        identity: WireIdentity {
            platform: "Not A Platform".into(),
            user: "1".into(),
        },
    })
    .expect("encode");
    let r = ask("profile", bad_identity).await;
    assert!(matches!(r, Reply::Error(_)), "{r:?}");
    let r = ask("nonsense", Vec::new()).await;
    assert!(
        matches!(&r, Reply::Error(e) if e.contains("unknown query")),
        "{r:?}"
    );

    // A query that acts for a member speaks for that member's platform, on its subject
    // (which NATS permissions give only to that platform's user): the Telegram bot's
    // credentials cannot get a code for a Discord member, asked either way.
    let for_victim = rmp_serde::to_vec_named(&ttfd::query::IssueRequest {
        identity: WireIdentity {
            platform: "discord".into(),
            user: "42".into(),
        },
    })
    .expect("encode");
    let r = ask("as.telegram.link.issue", for_victim.clone()).await;
    assert!(
        matches!(&r, Reply::Error(e) if e.contains("speaks for platform \"telegram\"")),
        "{r:?}"
    );
    let r = ask("link.issue", for_victim.clone()).await;
    assert!(
        matches!(&r, Reply::Error(e) if e.contains("query.as.discord.")),
        "{r:?}"
    );
    let r = ask("as.telegram.profile", for_victim).await;
    assert!(
        matches!(&r, Reply::Error(e) if e.contains("speaks for platform \"telegram\"")),
        "{r:?}"
    );
    let issued: i64 = sqlx::query_scalar("SELECT count(*) FROM link_codes")
        .fetch_one(&env.store.pool)
        .await
        .expect("count");
    assert_eq!(issued, 0, "no code was issued for the member");
    stop.cancel();
    service.await.expect("service").expect("served");
    env.cleanup().await;
}

/// The harness itself: a test that fails before `cleanup` leaves neither its database
/// nor its streams behind.
#[tokio::test]
async fn a_failing_test_leaves_no_database_and_no_streams_behind() {
    let (name, prefix) = tokio::spawn(async {
        let env = TestEnv::new().await;
        let names = (env.db.name.clone(), env.settings.nats.prefix.clone());
        std::panic::panic_any(names);
    })
    .await
    .expect_err("the test fails")
    .into_panic()
    .downcast::<(String, String)>()
    .map(|b| *b)
    .expect("the names");
    let witness = TestEnv::new().await;
    let databases: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&witness.store.pool)
        .await
        .expect("count");
    assert_eq!(databases, 0, "{name} removed");
    let upper = format!("{}_", prefix.to_uppercase());
    let streams: Vec<String> = futures::TryStreamExt::try_collect(witness.broker.js.stream_names())
        .await
        .expect("streams");
    assert!(
        !streams.iter().any(|s| s.starts_with(&upper)),
        "streams of {prefix} removed: {streams:?}"
    );
    witness.cleanup().await;
}
