//! End-to-end tests of the sync pipeline against real PostgreSQL and NATS JetStream.
//! The reference model (`ttfd_shared::model::fold`) says what the database must hold.

use std::time::Duration;

use crate::common::{Outage, TestEnv, community, eventually};
use async_nats::jetstream::consumer::DeliverPolicy;
use bytes::Bytes;
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tokio_util::sync::CancellationToken;
use ttfd::shared::arbitrary::{delivery, event_set};
use ttfd::shared::wire::{EventId, LinkNotice, Proof, RankNotice};
use ttfd::shared::{Event, Identity, Payload};
use ttfd::store::standings::{LastRound, Pacing};
use ttfd::sync::Counters;

fn ev(id: &str, ts: i64, who: &str, name: Option<&str>, payload: Payload) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts,
        identity: Identity::parse(who).expect("identity"),
        name: name.map(str::to_owned),
        payload,
    }
}

/// An XP grant of `amount` to `who`.
fn grant(id: &str, ts: i64, who: &str, amount: i32) -> Event {
    ev(
        id,
        ts,
        who,
        None,
        Payload::Xp {
            amount,
            reason: "r".into(),
            by: None,
        },
    )
}

fn link(other: &str) -> Payload {
    Payload::Link {
        other: Identity::parse(other).expect("identity"),
        proof: Proof::Code,
        by: None,
    }
}

fn message(len: u64) -> Payload {
    Payload::Message {
        len: Some(len),
        chat: None,
        mult: None,
    }
}

async fn count_processed(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM processed_events ")
        .fetch_one(&env.store.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn events_published_to_nats_come_out_as_ttfd_user_profiles() {
    let env = TestEnv::new().await;
    let now = ttfd::now_ms();
    let events = vec![
        ev(
            "e:1",
            now - 3_600_000,
            "discord:111",
            Some("Alice"),
            message(30),
        ),
        ev("e:2", now - 3_599_000, "discord:111", None, message(30)),
        ev(
            "e:3",
            now - 3_000_000,
            "discord:111",
            None,
            Payload::Voice {
                seconds: 1800,
                channel: None,
                mult: None,
            },
        ),
        ev(
            "e:4",
            now - 2_000_000,
            "telegram:222",
            Some("alice_tg"),
            Payload::Game {
                game: "quiz".into(),
                won: true,
                xp: 400,
            },
        ),
        ev(
            "e:5",
            now - 1_000_000,
            "telegram:222",
            None,
            link("discord:111"),
        ),
    ];
    env.publish(&events).await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    env.wait_for_model(&events).await;

    let out = env
        .ttfd(&["user", "discord:111", "--json"])
        .output()
        .await
        .expect("run ttfd user");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(p["xp"], 10 + 120 + 400);
    assert_eq!(p["rank"]["name"], "F II");
    assert_eq!(p["rank"]["next_xp"], 1250);
    assert_eq!(
        (p["peak_rank"].clone(), p["coins"].clone()),
        (2.into(), 50.into())
    );
    assert_eq!(p["messages"], 2);
    assert_eq!(p["voice_seconds"], 1800);
    assert_eq!(
        (p["games_played"].clone(), p["games_won"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(p["display_name"], "alice_tg");
    assert_eq!(p["identities"].as_array().map(Vec::len), Some(2));
    for key in ["uid", "created_at", "last_active"] {
        assert!(!p[key].is_null(), "{key} present");
    }
    let other = env
        .ttfd(&["user", "telegram:222", "--json"])
        .output()
        .await
        .expect("run");
    let q: serde_json::Value = serde_json::from_slice(&other.stdout).expect("JSON");
    assert_eq!(
        p["uid"], q["uid"],
        "both identities show the one unified user"
    );

    let unknown = env
        .ttfd(&["user", "discord:999"])
        .output()
        .await
        .expect("run");
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("discord:999"));

    // Where the XP came from (docs/rules.md, "The XP statement"), for either identity.
    let statement = env
        .ttfd(&["statement", "telegram:222", "--period", "all", "--json"])
        .output()
        .await
        .expect("run");
    assert!(statement.status.success(), "{statement:?}");
    let s: serde_json::Value = serde_json::from_slice(&statement.stdout).expect("JSON");
    let t = &s["total"];
    assert_eq!(
        [&t["xp"], &t["messages_xp"], &t["voice_xp"], &t["games_xp"]],
        [530, 10, 120, 400],
        "{s}"
    );
    let platforms: Vec<(&str, i64)> = s["platforms"]
        .as_array()
        .expect("platforms")
        .iter()
        .map(|p| {
            (
                p["platform"].as_str().unwrap_or(""),
                p["xp"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(platforms, [("discord", 130), ("telegram", 400)]);
    let words = env
        .ttfd(&["statement", "discord:111", "--period", "all"])
        .output()
        .await
        .expect("run");
    let words = String::from_utf8_lossy(&words.stdout);
    assert!(
        words.contains("where the XP came from, all time: 530 XP")
            && words.contains("Games: 400 XP (1 played)")
            && words.contains("Voice: 120 XP (30 min)"),
        "{words}"
    );

    let top = env
        .ttfd(&["top", "--period", "week", "--json"])
        .output()
        .await
        .expect("run");
    let rows: serde_json::Value = serde_json::from_slice(&top.stdout).expect("JSON");
    assert_eq!(rows[0]["xp"], 530);

    stop.cancel();
    worker.await.expect("worker stops");
    env.cleanup().await;
}

#[tokio::test]
async fn duplicates_apply_once_even_after_the_dedupe_window() {
    let env = TestEnv::new().await;
    let now = ttfd::now_ms();
    let grant = ev(
        "dup:1",
        now,
        "discord:1",
        None,
        Payload::Xp {
            amount: 100,
            reason: "gift".into(),
            by: None,
        },
    );
    env.publish(std::slice::from_ref(&grant)).await;
    let again = env
        .broker
        .publish_event(&grant)
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert!(
        again.duplicate,
        "inside the window JetStream drops the copy"
    );
    // Then the window shrinks and passes: a copy is stored again, so exactly two
    // copies end up in the stream.
    env.publish_after_the_duplicate_window(&grant).await;

    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    env.wait_for_model(std::slice::from_ref(&grant)).await;
    eventually("both copies consumed", || async {
        let info = env
            .broker
            .sync_consumer()
            .await
            .ok()?
            .info()
            .await
            .ok()?
            .clone();
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    let p = env
        .store
        .profile(&grant.identity)
        .await
        .expect("query")
        .expect("user");
    assert_eq!(p.xp, 100, "applied once");
    stop.cancel();
    worker.await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_loses_and_doubles_nothing() {
    let env = TestEnv::with(|s| s.sync.batch_size = 50).await;
    let events = community(4000, 150, 1);
    let mut child = env.spawn_sync_process();
    let (first, rest) = events.split_at(2000);
    env.publish(first).await;
    eventually("some events applied", || async {
        (count_processed(&env).await > 300).then_some(())
    })
    .await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    let applied_at_kill = count_processed(&env).await;
    assert!(applied_at_kill < events.len() as i64, "killed mid-stream");
    env.publish(rest).await;
    let mut again = env.spawn_sync_process();
    env.wait_for_model(&events).await;
    assert_eq!(count_processed(&env).await, events.len() as i64);
    again.start_kill().expect("kill");
    env.cleanup().await;
}

async fn replicas_match_the_model(replicas: usize) {
    let env = TestEnv::with(|s| s.sync.batch_size = 25).await;
    let events = community(3000, 80, replicas as u64);
    let mut children: Vec<_> = (0..replicas).map(|_| env.spawn_sync_process()).collect();
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    for c in &mut children {
        c.start_kill().expect("kill");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn two_sync_processes_reach_the_same_state_as_one() {
    replicas_match_the_model(2).await;
}

#[tokio::test]
async fn three_sync_processes_reach_the_same_state_as_one() {
    replicas_match_the_model(3).await;
}

#[tokio::test]
async fn a_database_outage_delays_but_loses_nothing() {
    let env = TestEnv::with(|s| s.sync.batch_size = 100).await;
    let proxy = Outage::start(&env.db.options).await;
    let mut via_proxy = env.db.options.clone();
    via_proxy = via_proxy.port(proxy.port);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(via_proxy);
    let store = ttfd::store::Store::from_pool(pool, env.settings.rules.clone());
    let stop = CancellationToken::new();
    let (worker, counters) = env.spawn_counted_worker_on(store, stop.clone()).await;

    let events = community(3000, 100, 5);
    let (before, during) = events.split_at(1000);
    env.publish(before).await;
    eventually("the first events applied", || async {
        (count_processed(&env).await > 0).then_some(())
    })
    .await;
    proxy.cut();
    env.publish(during).await;
    // The outage lasts until the worker has failed a batch and come back to the database.
    eventually("a batch retried during the outage", || async {
        (Counters::get(&counters.retries) >= 1 && proxy.refused() >= 2).then_some(())
    })
    .await;
    let during_outage = count_processed(&env).await;
    assert!(
        during_outage < events.len() as i64,
        "nothing can be applied while the database is away"
    );
    proxy.restore();
    env.wait_for_model(&events).await;
    stop.cancel();
    worker.await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn every_kind_of_bad_input_is_dead_lettered_and_the_good_events_around_it_apply() {
    let env = TestEnv::new().await;
    let now = ttfd::now_ms();
    let s = &env.broker.subjects;
    let good_before = ev("g:1", now, "discord:1", None, message(10));
    let good_after = ev(
        "g:2",
        now,
        "telegram:2",
        None,
        Payload::Xp {
            amount: 7,
            reason: "ok".into(),
            by: None,
        },
    );
    let envelope = |v: serde_json::Value| Bytes::from(rmp_serde::to_vec_named(&v).expect("encode"));
    let base = |kind: &str, data: serde_json::Value| {
        serde_json::json!({"v": 1, "id": format!("bad:{kind}:{}", rand::random::<u32>()), "ts": now,
                           "platform": "discord", "user": "9", "kind": kind, "data": data})
    };
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base("message", serde_json::json!({}));
        f(&mut v);
        envelope(v)
    };
    let bad: Vec<(&str, String, Bytes)> = vec![
        (
            "undecodable",
            s.event("discord", "message"),
            Bytes::from_static(b"\xc1garbage"),
        ),
        (
            "undecodable",
            s.event("discord", "message"),
            Bytes::from(rmp_serde::to_vec(&(1, "x")).expect("enc")),
        ),
        (
            "missing_field",
            s.event("discord", "message"),
            with(&|v| {
                v.as_object_mut().map(|m| m.remove("user"));
            }),
        ),
        (
            "wrong_type",
            s.event("discord", "message"),
            with(&|v| v["ts"] = "soon".into()),
        ),
        (
            "out_of_range",
            s.event("discord", "message"),
            with(&|v| v["ts"] = 5.into()),
        ),
        (
            "unknown_version",
            s.event("discord", "message"),
            with(&|v| v["v"] = 9.into()),
        ),
        (
            "bad_id",
            s.event("discord", "message"),
            with(&|v| v["id"] = "".into()),
        ),
        (
            "unknown_kind",
            s.event("discord", "dance"),
            envelope(base("dance", serde_json::json!({}))),
        ),
        (
            "subject_mismatch",
            s.event("telegram", "message"),
            envelope(base("message", serde_json::json!({}))),
        ),
        (
            "out_of_range",
            s.event("discord", "voice"),
            envelope(base("voice", serde_json::json!({"seconds": 0}))),
        ),
        (
            "missing_field",
            s.event("discord", "game"),
            envelope(base("game", serde_json::json!({"game": "q"}))),
        ),
        (
            "out_of_range",
            s.event("discord", "xp"),
            envelope(base(
                "xp",
                serde_json::json!({"amount": 5_000_000, "reason": "x"}),
            )),
        ),
        (
            "out_of_range",
            s.event("discord", "link"),
            envelope(base(
                "link",
                serde_json::json!({"platform": "t", "user": "1", "proof": "vibes"}),
            )),
        ),
        (
            "oversized",
            s.event("discord", "message"),
            envelope(base(
                "message",
                serde_json::json!({"chat": "x".repeat(70_000)}),
            )),
        ),
        (
            "bad_subject",
            format!("{}.events.discord", s.prefix()),
            envelope(base("message", serde_json::json!({}))),
        ),
    ];
    env.publish(std::slice::from_ref(&good_before)).await;
    for (i, (_, subject, payload)) in bad.iter().enumerate() {
        env.broker
            .publish_raw(subject.clone(), &format!("raw:{i}"), payload.clone())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    env.publish(std::slice::from_ref(&good_after)).await;

    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    env.wait_for_model(&[good_before.clone(), good_after.clone()])
        .await;

    let mut codes: Vec<String> = env
        .dead_letters(bad.len())
        .await
        .iter()
        .map(|reason| reason.split(':').next().unwrap_or_default().to_owned())
        .collect();
    let mut want: Vec<String> = bad.iter().map(|b| b.0.to_owned()).collect();
    want.sort();
    codes.sort();
    assert_eq!(
        codes, want,
        "every bad message is on the dead-letter stream with its reason"
    );
    let counted: i64 = env
        .store
        .dead_letter_counts()
        .await
        .expect("counts")
        .iter()
        .map(|c| c.3)
        .sum();
    assert_eq!(counted, bad.len() as i64);
    stop.cancel();
    worker.await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn linking_users_with_activity_merges_them_conserving_totals_and_notifies() {
    let env = TestEnv::new().await;
    let mut notices = env
        .broker
        .client
        .subscribe(env.broker.subjects.notify(">"))
        .await
        .expect("subscribe");
    let now = ttfd::now_ms();
    let events = vec![
        ev(
            "m:1",
            now - 86_400_000,
            "discord:10",
            Some("Dee"),
            Payload::Xp {
                amount: 400,
                reason: "r".into(),
                by: None,
            },
        ),
        ev(
            "m:2",
            now - 86_400_000,
            "telegram:20",
            Some("Tee"),
            Payload::Game {
                game: "q".into(),
                won: false,
                xp: 300,
            },
        ),
        ev(
            "m:3",
            now - 1_000,
            "website:dee@example.org",
            None,
            message(20),
        ),
    ];
    env.publish(&events).await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let relay_stop = CancellationToken::new();
    let relay = env.spawn_relay(relay_stop.clone());
    env.wait_for_model(&events).await;
    let links = vec![
        ev("l:1", now, "discord:10", None, link("telegram:20")),
        ev(
            "l:2",
            now,
            "website:dee@example.org",
            None,
            Payload::Link {
                other: Identity::parse("telegram:20").expect("id"),
                proof: Proof::Oauth,
                by: None,
            },
        ),
    ];
    env.publish(&links).await;
    let all: Vec<Event> = events.iter().chain(&links).cloned().collect();
    env.wait_for_model(&all).await;
    let p = env
        .store
        .profile(&Identity::parse("website:dee@example.org").expect("id"))
        .await
        .expect("q")
        .expect("user");
    assert_eq!(
        (p.xp, p.games_played, p.messages, p.identities.len()),
        (710, 1, 1, 3)
    );
    assert_eq!(p.rank.name, "F II");

    let mut merged = Vec::new();
    let mut ranked = Vec::new();
    while merged.len() < 2 || ranked.is_empty() {
        let m = tokio::time::timeout(crate::common::TIMEOUT, notices.next())
            .await
            .expect("notices arrive")
            .expect("message");
        if m.subject.ends_with(".link") {
            merged.push(rmp_serde::from_slice::<LinkNotice>(&m.payload).expect("link notice"));
        } else {
            ranked.push(rmp_serde::from_slice::<RankNotice>(&m.payload).expect("rank notice"));
        }
    }
    assert!(
        merged
            .iter()
            .all(|n| n.uid == p.uid && n.v == 1 && n.id.starts_with("link:"))
    );
    let up = ranked
        .iter()
        .find(|n| n.uid == p.uid)
        .expect("the merged user ranked up");
    assert_eq!((up.old_rank, up.new_rank, up.xp), (1, 2, 710));
    assert_eq!(up.identities.len(), 3);
    relay_stop.cancel();
    stop.cancel();
    let _ = relay.await;
    worker.await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn links_racing_on_two_replicas_merge_into_one_user_each() {
    let env = TestEnv::with(|s| s.sync.batch_size = 4).await;
    let now = ttfd::now_ms();
    let mut events = Vec::new();
    // 40 people with four accounts each, all active, linked in a chain whose links
    // arrive interleaved, so the two replicas merge overlapping users at the same time.
    for p in 0..40 {
        let ids = [
            format!("discord:{p}"),
            format!("telegram:{p}"),
            format!("website:{p}"),
            format!("minecraft:{p}"),
        ];
        for (k, who) in ids.iter().enumerate() {
            events.push(ev(
                &format!("a:{p}:{k}"),
                now - 5_000,
                who,
                None,
                Payload::Xp {
                    amount: 100 + k as i32,
                    reason: "r".into(),
                    by: None,
                },
            ));
        }
        for k in 0..3 {
            events.push(ev(
                &format!("k:{p}:{k}"),
                now - 1_000,
                &ids[k],
                None,
                link(&ids[k + 1]),
            ));
        }
        events.push(ev(
            &format!("k:{p}:3"),
            now - 1_000,
            &ids[3],
            None,
            link(&ids[0]),
        ));
    }
    let stop = CancellationToken::new();
    let a = env.spawn_worker(stop.clone()).await;
    let b = env.spawn_worker(stop.clone()).await;
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    assert_eq!(env.store.user_count().await.expect("count"), 40);
    stop.cancel();
    a.await.expect("stops");
    b.await.expect("stops");
    env.cleanup().await;
}

#[tokio::test]
async fn a_crash_between_commit_and_publish_neither_loses_nor_duplicates_notifications() {
    let env = TestEnv::new().await;
    let now = ttfd::now_ms();
    // Committed with its notification, and then the process "dies" before relaying.
    env.store
        .apply(&[ev(
            "r:1",
            now,
            "discord:5",
            None,
            Payload::Xp {
                amount: 600,
                reason: "r".into(),
                by: None,
            },
        )])
        .await
        .expect("apply");
    assert_eq!(env.store.outbox_backlog().await.expect("backlog"), 1);
    // A relay publishes, then dies before deleting the row.
    use ttfd::store::outbox::Notice;
    let crashed = env
        .store
        .relay_outbox(10, async |notices: &[Notice]| {
            ttfd::sync::publish_notices(&env.broker, notices).await?;
            Err::<(), async_nats::Error>("crash before delete".into())
        })
        .await;
    assert!(crashed.is_err());
    assert_eq!(
        env.store.outbox_backlog().await.expect("backlog"),
        1,
        "the row survives the crash"
    );
    // The next relay publishes it again under the same id, and deletes it.
    let published = env
        .store
        .relay_outbox(10, async |notices: &[Notice]| {
            ttfd::sync::publish_notices(&env.broker, notices).await
        })
        .await
        .expect("relay");
    assert_eq!(published, 1);
    assert_eq!(env.store.outbox_backlog().await.expect("backlog"), 0);
    let mut notify = env
        .broker
        .js
        .get_stream(env.broker.subjects.notify_stream())
        .await
        .expect("stream");
    assert_eq!(
        notify.info().await.expect("info").state.messages,
        1,
        "stored once in effect"
    );
    env.cleanup().await;
}

/// A link between identities that are one user already can be older in event time
/// than the link that joined them: then the user was joined earlier, and a peak reached
/// only while apart was never held (found by the property test). Here: B's -3,000 on
/// day 1, A's +2,500 on day 3 (rank 4 while apart), the link of day 4 merges them, and
/// a link of day 2 arrives last: joined since day 2, the user never held rank 4.
#[tokio::test]
async fn an_older_link_between_one_users_identities_lowers_the_event_time_peak() {
    let env = TestEnv::new().await;
    let day = 86_400_000;
    let d0 = (ttfd::now_ms() / day - 10) * day;
    let link_at = |id: &str, ts: i64| ev(id, ts, "discord:a", None, link("telegram:b"));
    let events = [
        grant("o:1", d0 + day, "telegram:b", -3_000),
        grant("o:2", d0 + 3 * day, "discord:a", 2_500),
        link_at("discord:o:3", d0 + 4 * day),
        link_at("discord:o:4", d0 + 2 * day),
    ];
    for e in &events {
        env.store
            .apply(std::slice::from_ref(e))
            .await
            .expect("apply");
    }
    env.store.drain_standings().await.expect("drain");
    let expected = ttfd::shared::model::fold(&env.settings.rules, &events);
    assert_eq!(expected[0].peak_rank, 1, "the model: joined since day 2");
    crate::common::compare(&env.store, &expected)
        .await
        .expect("the model's state");
    env.cleanup().await;
}

#[test]
fn apply_order_batching_and_duplicates_do_not_change_the_state() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let env = rt.block_on(TestEnv::new());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    });
    let strategy = event_set(40, 6, true)
        .prop_flat_map(|events| (Just(events.clone()), delivery(events), 1usize..12));
    let result = runner.run(&strategy, |(events, delivered, batch)| {
        rt.block_on(async {
            env.db.truncate(&env.store.pool).await.expect("truncate");
            // A new store: the truncated tables restart their ids.
            let store =
                ttfd::store::Store::from_pool(env.store.pool.clone(), env.settings.rules.clone())
                    .with_block_target(2);
            for (i, chunk) in delivered.chunks(batch).enumerate() {
                store.apply(chunk).await.expect("apply");
                // Refresh rounds between some batches, not others: a round takes
                // whatever work is committed. Erasures are finished now and then too,
                // as the worker beside the consumers does (SPEC 7.4).
                if i % 3 == 1 {
                    store
                        .refresh_standings(Pacing::of(&env.settings.sync).at_once())
                        .await
                        .expect("refresh");
                }
                if i % 4 == 2 {
                    crate::common::finish_erasures(&store, &events).await;
                }
            }
            crate::common::finish_erasures(&store, &events).await;
            store.drain_standings().await.expect("drain");
            let expected = ttfd::shared::model::fold(&env.settings.rules, &events);
            crate::common::compare(&store, &expected).await?;
            let all = ttfd::store::audit::AuditQuery {
                limit: 1000,
                ..Default::default()
            };
            let (audit, total) = store.audit(&all).await.map_err(|e| e.to_string())?;
            let want = ttfd::shared::model::audit(&events);
            if audit != want || total != want.len() as i64 {
                return Err(format!("audit: {audit:#?}\nthe model's: {want:#?}"));
            }
            Ok(())
        })
        .map_err(proptest::test_runner::TestCaseError::fail)
    });
    rt.block_on(env.cleanup());
    result.expect("the database state depends only on the set of events");
}

#[tokio::test]
async fn tables_rebuilt_under_a_running_store_are_detected_and_the_batch_retried() {
    let env = TestEnv::new().await;
    let now = ttfd::now_ms();
    let grant = |id: &str, who: &str| grant(id, now, who, 5);
    env.store
        .apply(&[grant("c:1", "discord:1")])
        .await
        .expect("apply");
    // Rebuilt tables: identity ids start over, and another replica gives the first one
    // to telegram:2, so the id this store cached for discord:1 now names telegram:2.
    env.db.truncate(&env.store.pool).await.expect("truncate");
    let other = ttfd::store::Store::from_pool(env.store.pool.clone(), env.settings.rules.clone());
    other
        .apply(&[grant("c:2", "telegram:2")])
        .await
        .expect("apply");
    let stale = env.store.apply(&[grant("c:3", "discord:1")]).await;
    assert!(
        matches!(stale, Err(ttfd::store::StoreError::StaleCache)),
        "a stale cache entry is caught, not applied to the wrong identity: {stale:?}"
    );
    env.store
        .apply(&[grant("c:3", "discord:1")])
        .await
        .expect("the retry applies");
    let discord = env
        .store
        .profile(&Identity::parse("discord:1").expect("id"))
        .await
        .expect("q")
        .expect("user");
    let telegram = env
        .store
        .profile(&Identity::parse("telegram:2").expect("id"))
        .await
        .expect("q")
        .expect("user");
    assert_eq!((discord.xp, telegram.xp), (5, 5));
    assert_ne!(discord.uid, telegram.uid);
    env.cleanup().await;
}

/// A replica's cached owner merged away by another replica: its next batch follows
/// `merged_into` to the survivor instead of adding to the merged-away user.
#[tokio::test]
async fn an_owner_merged_away_by_another_replica_is_followed() {
    let env = TestEnv::new().await;
    let now = ttfd::now_ms();
    let grant = |id: &str, who: &str| grant(id, now, who, 5);
    let other = ttfd::store::Store::from_pool(env.store.pool.clone(), env.settings.rules.clone());
    // telegram:2 first, so that its user (the smaller id) survives the merge.
    other
        .apply(&[grant("o:1", "telegram:2")])
        .await
        .expect("apply");
    env.store
        .apply(&[grant("o:2", "discord:1")])
        .await
        .expect("apply");
    let survivor = env
        .store
        .profile(&Identity::parse("telegram:2").expect("id"))
        .await
        .expect("q")
        .expect("user")
        .uid;
    other
        .apply(&[ev("o:3", now, "telegram:2", None, link("discord:1"))])
        .await
        .expect("merge");
    // This store still has discord:1 owned by the merged-away user.
    env.store
        .apply(&[grant("o:4", "discord:1")])
        .await
        .expect("apply after the merge");
    for who in ["discord:1", "telegram:2"] {
        let p = env
            .store
            .profile(&Identity::parse(who).expect("id"))
            .await
            .expect("q")
            .expect("user");
        assert_eq!((p.uid, p.xp), (survivor, 15), "{who}");
    }
    let merged: (i64, Option<i64>) = sqlx::query_as(
        "SELECT xp, merged_into FROM users WHERE id <> $1 AND first_event_ms IS NOT NULL",
    )
    .bind(survivor)
    .fetch_one(&env.store.pool)
    .await
    .expect("the merged-away user");
    assert_eq!(
        merged,
        (0, Some(survivor)),
        "nothing was added to the merged-away user"
    );
    env.cleanup().await;
}

/// The peak rank of a user with a negative day: batches that only add XP after the
/// user's last active day take the fast path; an out-of-order one that raises an earlier
/// day's cumulative XP above today's must still find that day's higher rank.
#[tokio::test]
async fn the_peak_rank_after_a_negative_day_follows_in_order_and_late_events() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let day = 86_400_000;
    let t0 = (ttfd::now_ms() / day - 5) * day + 3_600_000;
    let grant = |id: &str, ts: i64, amount: i32| {
        ev(
            id,
            ts,
            "discord:1",
            None,
            Payload::Xp {
                amount,
                reason: "test".into(),
                by: None,
            },
        )
    };
    let mut events = Vec::new();
    // F II (500) on day 0, then a negative day: 300, the peak stays F II.
    for step in [
        vec![grant("g:1", t0, 600), grant("g:2", t0 + day, -300)],
        // In order, positive: 400, F I; the peak is still F II.
        vec![grant("g:3", t0 + 2 * day, 100)],
        // Late, on day 0: day 0 closes at 1300 (F III, from 1250), the total is 1100.
        vec![grant("g:4", t0 + 60_000, 700)],
        // In order again: 1200; the peak stays F III.
        vec![grant("g:5", t0 + 3 * day, 100)],
    ] {
        events.extend(step.clone());
        env.publish(&step).await;
        env.wait_for_model(&events).await;
    }
    let p = env
        .store
        .profile(&Identity::parse("discord:1").expect("identity"))
        .await
        .expect("profile")
        .expect("a user");
    assert_eq!((p.xp, p.peak_rank), (1200, 3));
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// `nats.user` and `nats.password` reach a server that requires them (a private
/// nats-server on a free port); without them the connection is refused.
#[tokio::test]
async fn a_nats_server_requiring_a_user_accepts_the_configured_credentials() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").port()
    };
    let args = [
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--user",
        "ttfd-sync",
        "--pass",
        "s3cret",
    ];
    let mut server = ["nats-server", "/usr/sbin/nats-server"]
        .iter()
        .find_map(|bin| {
            tokio::process::Command::new(bin)
                .args(args)
                .kill_on_drop(true)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()
        })
        .expect("nats-server is installed (scripts/services.sh)");
    let mut nats = ttfd::settings::NatsSettings {
        url: format!("nats://127.0.0.1:{port}"),
        prefix: "creds".into(),
        ..Default::default()
    };
    eventually("the server listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    let refused = ttfd::broker::Broker::connect(&nats, Duration::from_secs(2)).await;
    assert!(refused.is_err(), "no credentials, no connection");
    nats.user = Some("ttfd-sync".into());
    nats.password = Some(secrecy::SecretString::from("s3cret"));
    let broker = ttfd::broker::Broker::connect(&nats, Duration::from_secs(5))
        .await
        .expect("connects with the credentials");
    broker.client.flush().await.expect("a round trip");
    server.kill().await.expect("stop the server");
}

/// SPEC 7.2 end to end: a minute pays at the largest `data.mult` of its messages in
/// whichever order and batches they arrive (a boosted channel, a plain one, a no-XP
/// one), and voice pays its mult.
#[tokio::test]
async fn multipliers_pay_the_largest_mult_of_a_minute_in_any_order() {
    let env = TestEnv::new().await;
    let d0 = (ttfd::now_ms() / 86_400_000 - 2) * 86_400_000;
    let say = |id: &str, who: &str, ts: i64, mult: Option<u16>| {
        let payload = Payload::Message {
            len: Some(20),
            chat: None,
            mult,
        };
        ev(id, ts, who, None, payload)
    };
    let minute = [None, Some(200), Some(0)];
    let mut applied = Vec::new();
    let mut apply = |batch: Vec<Event>| {
        applied.extend(batch.clone());
        let store = env.store.clone();
        async move { store.apply(&batch).await.expect("apply") }
    };
    for (who, order) in [
        ("discord:1", [0, 1, 2]),
        ("discord:2", [1, 0, 2]),
        ("discord:3", [2, 0, 1]),
    ] {
        for (n, i) in order.into_iter().enumerate() {
            apply(vec![say(
                &format!("{who}:m:{n}"),
                who,
                d0 + 1_000 * n as i64,
                minute[i],
            )])
            .await;
        }
    }
    // Minute 1: only a no-XP message, then one at 50 %.
    apply(vec![say(
        "discord:1:q:1",
        "discord:1",
        d0 + 60_000,
        Some(0),
    )])
    .await;
    apply(vec![say(
        "discord:1:q:2",
        "discord:1",
        d0 + 61_000,
        Some(50),
    )])
    .await;
    let voice = Payload::Voice {
        seconds: 600,
        channel: None,
        mult: Some(150),
    };
    apply(vec![ev("discord:2:v", d0, "discord:2", None, voice)]).await;
    let xp = |who: &str| {
        let store = env.store.clone();
        let who = Identity::parse(who).expect("identity");
        async move { store.profile(&who).await.expect("profile").expect("user") }
    };
    let one = xp("discord:1").await;
    assert_eq!(
        (one.xp, one.messages),
        (20 + 5, 5),
        "200 % in minute 0, 50 % in minute 1"
    );
    assert_eq!(xp("discord:2").await.xp, 20 + 600 * 4 * 150 / 6000);
    assert_eq!(xp("discord:3").await.xp, 20);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM xp_ledger WHERE mults IS NOT NULL")
        .fetch_one(&env.store.pool)
        .await
        .expect("ledger");
    assert_eq!(rows, 3, "each identity's day keeps its multiplied minutes");
    env.store.drain_standings().await.expect("standings");
    let expected = ttfd::shared::model::fold(&env.settings.rules, &applied);
    crate::common::compare(&env.store, &expected)
        .await
        .expect("the model's state");
    env.cleanup().await;
}

/// Message XP is paid once per identity and minute across batches: the minutes live as
/// a bitmap on the identity's ledger row of the day, bit `n` from the left for minute
/// `n`, as PostgreSQL's `set_bit` (and so migration 6, which filled it) counts them.
#[tokio::test]
async fn message_minutes_pay_once_across_batches_and_are_stored_as_the_day_s_bits() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let day = 86_400_000;
    let minute = 60_000;
    let d0 = (ttfd::now_ms() / day - 3) * day;
    let say = |id: &str, ts: i64| ev(id, ts, "telegram:7", None, message(20));
    let mut events = Vec::new();
    for step in [
        vec![
            say("m:1", d0),
            say("m:2", d0 + 5 * minute),
            say("m:3", d0 + 5 * minute + 1),
        ],
        // Minute 5 again, the day's last minute, and the next day's first.
        vec![
            say("m:4", d0 + 5 * minute + 30_000),
            say("m:5", d0 + day - 1),
            say("m:6", d0 + day),
        ],
    ] {
        events.extend(step.clone());
        env.publish(&step).await;
        env.wait_for_model(&events).await;
    }
    let p = env
        .store
        .profile(&Identity::parse("telegram:7").expect("identity"))
        .await
        .expect("profile")
        .expect("a user");
    let message_xp = env.settings.rules.message_xp;
    assert_eq!((p.xp, p.messages), (4 * message_xp, 6));
    let rows: Vec<(i32, i64, bool)> = sqlx::query_as(
        "SELECT l.day - DATE '1970-01-01', l.xp,
                l.minutes = (SELECT bit_or(set_bit(repeat('0', 1440)::bit(1440), m, 1))
                             FROM unnest($1::int4[]) AS m)
         FROM xp_ledger l ORDER BY l.day",
    )
    .bind(vec![0, 5, 1439])
    .fetch_all(&env.store.pool)
    .await
    .expect("ledger");
    let d = i32::try_from(d0 / day).expect("day");
    assert_eq!(
        rows[0],
        (d, 3 * message_xp, true),
        "day 0: minutes 0, 5, 1439"
    );
    let next: (i64, String) = sqlx::query_as(
        "SELECT xp, minutes::text FROM xp_ledger WHERE day = DATE '1970-01-01' + $1",
    )
    .bind(d + 1)
    .fetch_one(&env.store.pool)
    .await
    .expect("the next day");
    assert_eq!(next.0, message_xp);
    assert_eq!(next.1.find('1'), Some(0), "day 1: minute 0");
    assert_eq!(next.1.matches('1').count(), 1);
    assert_eq!(rows.len(), 2);
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// Migration 6 moves `message_buckets` onto the ledger rows bit for bit as the apply
/// path sets them: after it, a message in a minute that paid before pays nothing, one in
/// a new minute pays, also on a day that had minutes but no ledger row.
#[tokio::test]
async fn migration_6_moves_paid_minutes_onto_the_ledger_rows() {
    use ttfd::store::{MIGRATOR, Store};

    let env = TestEnv::new().await;
    let pool = env.schema_before("before6", 20261125000006).await;
    let day = 86_400_000;
    let minute = 60_000;
    let d = ttfd::now_ms() / day - 3;
    let mx = env.settings.rules.message_xp;
    // telegram:7 was paid for minutes 5 and 1439 of day d and, with message XP 0 at the
    // time, minute 0 of day d + 1 (a bucket without a ledger row).
    for statement in [
        format!(
            "INSERT INTO users (id, xp, messages, first_event_ms, last_event_ms)
             VALUES (1, {}, 3, {}, {})",
            2 * mx,
            d * day + 5 * minute,
            (d + 1) * day
        ),
        "INSERT INTO identities (id, platform, external_id, user_id) VALUES (1, 'telegram', '7', 1)"
            .into(),
        "SELECT setval('users_id_seq', 1), setval('identities_id_seq', 1)".into(),
        format!(
            "INSERT INTO xp_ledger (identity_id, day, xp) VALUES (1, DATE '1970-01-01' + {d}, {})",
            2 * mx
        ),
        format!(
            "INSERT INTO message_buckets (identity_id, minute)
             VALUES (1, {0} * 1440 + 5), (1, {0} * 1440 + 1439), (1, ({0} + 1) * 1440)",
            d
        ),
    ] {
        sqlx::query(&statement)
            .execute(&pool)
            .await
            .expect("state before migration 6");
    }
    MIGRATOR.run(&pool).await.expect("migration 6");
    let store = Store::from_pool(pool, env.settings.rules.clone());
    let say = |id: &str, ts: i64| ev(id, ts, "telegram:7", None, message(20));
    store
        .apply(&[
            say("m:1", d * day + 5 * minute + 30_000),
            say("m:2", d * day + day - 1),
            say("m:3", (d + 1) * day + 1),
            say("m:4", d * day + 6 * minute),
        ])
        .await
        .expect("apply");
    let p = store
        .profile(&Identity::parse("telegram:7").expect("identity"))
        .await
        .expect("profile")
        .expect("a user");
    assert_eq!(
        (p.xp, p.messages),
        (3 * mx, 7),
        "only minute 6 of day d pays"
    );
    env.cleanup().await;
}

/// A schema the running version does not match (a table a newer migration removed, as
/// during an upgrade's rollout) stalls the batch, retried with backoff, instead of
/// dead-lettering its events; once the schema fits again they apply.
#[tokio::test]
async fn a_schema_mismatch_stalls_the_batch_instead_of_dead_lettering_it() {
    let env = TestEnv::new().await;
    sqlx::query("ALTER TABLE xp_ledger RENAME TO xp_ledger_elsewhere")
        .execute(&env.store.pool)
        .await
        .expect("rename");
    let stop = CancellationToken::new();
    let (worker, counters) = env
        .spawn_counted_worker_on(env.store.clone(), stop.clone())
        .await;
    let events = community(200, 20, 31);
    env.publish(&events).await;
    eventually("the batch tried and retried", || async {
        (Counters::get(&counters.retries) >= 2).then_some(())
    })
    .await;
    assert_eq!(
        count_processed(&env).await,
        0,
        "nothing applied without the ledger"
    );
    let dlq = env
        .broker
        .js
        .get_stream(env.broker.subjects.dlq_stream())
        .await
        .expect("dlq stream")
        .info()
        .await
        .expect("dlq info")
        .state
        .messages;
    assert_eq!(dlq, 0, "nothing dead-lettered");
    sqlx::query("ALTER TABLE xp_ledger_elsewhere RENAME TO xp_ledger")
        .execute(&env.store.pool)
        .await
        .expect("rename back");
    env.wait_for_model(&events).await;
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// Records the ids of the notices it is given.
struct Recorder(std::sync::Mutex<Vec<String>>);

impl ttfd::broker::notices::NoticeHandler for Recorder {
    type Notice = RankNotice;

    async fn handle(&self, notice: RankNotice, _attempt: u32) -> ttfd::broker::notices::Outcome {
        self.0.lock().expect("not poisoned").push(notice.id);
        ttfd::broker::notices::Outcome::Done
    }
}

#[tokio::test]
async fn a_first_start_with_an_old_notify_stream_announces_nothing_old() {
    use ttfd::broker::notices::{NoticeConsumer, NoticePolicy};
    let env = TestEnv::new().await;
    let notice = |id: &str| RankNotice {
        v: 1,
        id: id.into(),
        ts: 0,
        uid: 1,
        old_rank: 1,
        new_rank: 2,
        xp: 500,
        identities: Vec::new(),
        notify: true,
        hidden: false,
    };
    let publish = |n: RankNotice| {
        let (js, subject) = (env.broker.js.clone(), env.broker.subjects.notify("rank"));
        async move {
            let bytes = rmp_serde::to_vec_named(&n).expect("encodes");
            js.publish(subject, bytes.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    };
    publish(notice("rank:old")).await;
    for policy in [
        ttfd::telegram::notices::POLICY,
        ttfd::discord::roles::POLICY,
    ] {
        assert_eq!(policy.deliver, DeliverPolicy::New, "{}", policy.durable);
    }
    let policy = NoticePolicy {
        durable: "test-notices",
        ..ttfd::discord::roles::POLICY
    };
    let consumer = NoticeConsumer::open(&env.broker, policy)
        .await
        .expect("opens");
    let recorder = std::sync::Arc::new(Recorder(Default::default()));
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(recorder.clone(), stop.clone()));
    publish(notice("rank:new")).await;
    eventually("the new notice is handled", || async {
        let seen = recorder.0.lock().expect("not poisoned");
        seen.contains(&"rank:new".to_owned()).then_some(())
    })
    .await;
    stop.cancel();
    task.await.expect("the consumer stops");
    assert_eq!(
        *recorder.0.lock().expect("not poisoned"),
        vec!["rank:new".to_owned()]
    );
    env.cleanup().await;
}

/// A `recompute` work row (the one migration 9 leaves on a database with users) builds
/// every standing from the users and the ledger, while batches go on: what they commit
/// meanwhile is applied on top, and the state is the model's.
#[tokio::test]
async fn a_recompute_rebuilds_the_standings_while_batches_go_on() {
    let env = TestEnv::new().await;
    let events = community(400, 20, 21);
    let (before, after) = events.split_at(250);
    for chunk in before.chunks(40) {
        env.store.apply(chunk).await.expect("apply");
    }
    env.store.drain_standings().await.expect("drain");
    // Standings lost (or never built): only the recompute can bring them back.
    sqlx::query("DELETE FROM standings")
        .execute(&env.store.pool)
        .await
        .expect("lose the standings");
    sqlx::query("INSERT INTO standing_work (recompute) VALUES (true)")
        .execute(&env.store.pool)
        .await
        .expect("ask for a recompute");
    let (a, b) = after.split_at(60);
    env.store.apply(a).await.expect("apply");
    let recompute = {
        let store = env.store.clone();
        tokio::spawn(async move { store.drain_standings().await })
    };
    env.store.apply(b).await.expect("apply while recomputing");
    recompute.await.expect("join").expect("recompute");
    env.store.drain_standings().await.expect("drain");
    let expected = ttfd::shared::model::fold(&env.settings.rules, &events);
    crate::common::compare(&env.store, &expected)
        .await
        .expect("the recomputed standings are the model's");
    env.cleanup().await;
}

/// The replicas' shared clock: a round with work keeps when it began, how long it took
/// and how long its oldest change waited beyond the gap before it; the next round waits
/// for `Pacing::gap` of those since, and a round at once (a backlog) does not wait.
#[tokio::test]
async fn refresh_rounds_are_paced_by_the_last_rounds_length_on_the_database_clock() {
    use std::time::Duration;
    use ttfd::store::standings::Turn;
    let env = TestEnv::new().await;
    let events = community(60, 5, 3);
    let (first, second) = events.split_at(30);
    env.store.apply(first).await.expect("apply");
    let pacing = Pacing {
        every: Duration::from_millis(100),
        within: Duration::from_secs(2),
    };
    let Turn::Done(done) = env.store.refresh_standings(pacing).await.expect("round") else {
        panic!("the first round is nobody's turn but this one's");
    };
    assert!(done.batches > 0);
    let (took,): (f64,) =
        sqlx::query_as("SELECT extract(epoch FROM took)::float8 FROM standings_clock")
            .fetch_one(&env.store.pool)
            .await
            .expect("the clock");
    assert!(took > 0.0, "the round's length is kept: {took}");

    // A long round (as under load), which began 200 ms after a batch wrote work it did
    // not see: the next waits about ten times its length.
    env.store.apply(second).await.expect("apply");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query(
        "UPDATE standings_clock SET at = now(), took = interval '100 ms', overhang = interval '100 ms'",
    )
    .execute(&env.store.pool)
    .await
    .expect("a long round");
    let want = pacing.gap(LastRound {
        took: Duration::from_millis(100),
        overhang: Duration::from_millis(100),
    });
    assert_eq!(want, Duration::from_millis(1000));
    match env.store.refresh_standings(pacing).await.expect("turn") {
        Turn::Early(wait) => assert!(
            wait <= want && wait > want - Duration::from_millis(500),
            "waits {wait:?} of {want:?}"
        ),
        other => panic!("expected to wait: {other:?}"),
    }
    // Rounds at once while a backlog lasts; the round says how long the oldest change
    // it applied waited.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let turn = env
        .store
        .refresh_standings(pacing.at_once())
        .await
        .expect("round");
    assert!(
        matches!(turn, Turn::Done(d) if d.batches > 0 && !d.recomputed
            && d.lag >= Duration::from_millis(500) && d.lag < Duration::from_secs(60)),
        "a round at once: {turn:?}"
    );
    // That change waited 200 ms longer than the round's gap and length: the clock keeps
    // it as the overhang, which the next gap leaves room for.
    let (took, overhang): (f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM took)::float8, extract(epoch FROM overhang)::float8
         FROM standings_clock",
    )
    .fetch_one(&env.store.pool)
    .await
    .expect("the clock");
    assert!(
        overhang >= took + 0.15 && overhang < took + 60.0,
        "overhang {overhang} of a round of {took}"
    );
    let expected = ttfd::shared::model::fold(&env.settings.rules, &events);
    crate::common::compare(&env.store, &expected)
        .await
        .expect("the model's state");
    env.cleanup().await;
}
