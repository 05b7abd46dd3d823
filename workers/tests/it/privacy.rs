//! Members' data rights and taking links back (issue 14, SPEC 7.3 and 7.4) end to end:
//! unlinks split users in the database as the reference model does, whatever the
//! order, on every replica, and `ttfd rebuild --check` agrees.

use crate::common::{TestEnv, compare};
use tokio_util::sync::CancellationToken;
use ttfd::replay::rebuild::{RebuildArgs, RebuildOutcome, rebuild_with};
use ttfd::shared::model;
use ttfd::shared::wire::{EventId, Proof};
use ttfd::shared::{Event, Identity, Payload};
use ttfd::store::Store;

const T0: i64 = 1_772_150_400_000; // 2026-02-27T00:00:00Z

fn ev(id: &str, ts: i64, who: &str, payload: Payload) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts: T0 + ts,
        identity: Identity::parse(who).expect("identity"),
        name: None,
        payload,
    }
}

fn grant(amount: i32) -> Payload {
    Payload::Xp {
        amount,
        reason: "quiz".into(),
        by: None,
    }
}

fn link(other: &str, proof: Proof) -> Payload {
    Payload::Link {
        other: Identity::parse(other).expect("identity"),
        proof,
        by: None,
    }
}

fn unlink(other: &str) -> Payload {
    Payload::Unlink {
        other: Identity::parse(other).expect("identity"),
        reason: "the wrong person typed the code".into(),
        by: Some(Identity::parse("cli:ops").expect("identity")),
    }
}

/// Applies `event` as the sync consumer does, retrying a batch its replica's owner
/// cache sent back (after another replica's split: the cache starts over).
async fn retrying(store: &Store, event: &Event) {
    match store.apply(std::slice::from_ref(event)).await {
        Err(ttfd::store::StoreError::StaleCache) => {
            store
                .apply(std::slice::from_ref(event))
                .await
                .expect("the retry applies");
        }
        other => {
            other.expect("apply");
        }
    }
}

async fn uid_of(store: &Store, who: &str) -> i64 {
    store
        .profile(&Identity::parse(who).expect("identity"))
        .await
        .expect("read")
        .expect("a profile")
        .uid
}

/// An unlink splits a user of three identities: the part with the smallest identity
/// keeps the uid, the other becomes a user of its own with what it earned; another
/// replica, whose owner cache still has the old owner, applies the part's next event to
/// the new user; a link older than the cut, arriving late, joins nobody, a newer one
/// joins again. Every step is the model's state, standings and audit included.
#[tokio::test]
async fn an_unlink_splits_a_user_and_every_replica_follows_the_split() {
    let env = TestEnv::new().await;
    let replica_a = Store::from_pool(env.store.pool.clone(), env.settings.rules.clone());
    let replica_b = Store::from_pool(env.store.pool.clone(), env.settings.rules.clone());
    let mut events = vec![
        ev("g:1", 0, "discord:1", grant(500)),
        ev("g:2", 1_000, "telegram:2", grant(300)),
        ev("g:3", 2_000, "website:3", grant(100)),
        ev("l:12", 10_000, "discord:1", link("telegram:2", Proof::Code)),
        ev(
            "l:23",
            11_000,
            "telegram:2",
            link("website:3", Proof::Admin),
        ),
    ];
    replica_a.apply(&events).await.expect("apply");
    let check = |events: Vec<Event>| {
        let store = env.store.clone();
        let rules = env.settings.rules.clone();
        async move {
            store.drain_standings().await.expect("standings");
            let expected = model::fold(&rules, &events);
            compare(&store, &expected).await.expect("the model's state");
            expected
        }
    };
    let whole = check(events.clone()).await;
    assert_eq!(whole.len(), 1);
    let uid = uid_of(&env.store, "discord:1").await;

    // Replica B takes website:3 back off; A has never heard of it.
    let cut = ev("u:23", 20_000, "website:3", unlink("telegram:2"));
    replica_b
        .apply(std::slice::from_ref(&cut))
        .await
        .expect("apply");
    events.push(cut);
    let parts = check(events.clone()).await;
    assert_eq!(parts.len(), 2);
    assert_eq!(
        uid_of(&env.store, "telegram:2").await,
        uid,
        "the keeper keeps the uid"
    );
    let split_off = uid_of(&env.store, "website:3").await;
    assert_ne!(split_off, uid);
    let p = env
        .store
        .profile(&Identity::parse("website:3").expect("identity"))
        .await
        .expect("read")
        .expect("a profile");
    assert_eq!((p.xp, p.identities.len()), (100, 1));

    // Replica A's cache still says website:3 belongs to the first user: the owner
    // epoch the split moved sends its batch back (a transient error the consumer
    // retries), and the retry reads the owners afresh.
    let late = ev("g:4", 30_000, "website:3", grant(50));
    let stale = replica_a.apply(std::slice::from_ref(&late)).await;
    assert!(
        matches!(stale, Err(ttfd::store::StoreError::StaleCache)),
        "{stale:?}"
    );
    retrying(&replica_a, &late).await;
    events.push(late);
    check(events.clone()).await;
    assert_eq!(uid_of(&env.store, "website:3").await, split_off);

    // A link older than the cut, arriving now, counts for nothing; a newer one joins.
    let stale = ev(
        "l:23-old",
        15_000,
        "website:3",
        link("telegram:2", Proof::Code),
    );
    retrying(&replica_a, &stale).await;
    events.push(stale);
    assert_eq!(check(events.clone()).await.len(), 2);
    let again = ev(
        "l:23-new",
        40_000,
        "telegram:2",
        link("website:3", Proof::Code),
    );
    retrying(&replica_b, &again).await;
    events.push(again);
    let joined = check(events.clone()).await;
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].xp, 950);

    // The audit log has the unlink with its reason and who did it.
    let (log, _) = env
        .store
        .audit(&ttfd::store::audit::AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("audit");
    let entry = log
        .iter()
        .find(|e| e.kind == "unlink")
        .expect("an unlink entry");
    assert_eq!(
        entry.reason.as_deref(),
        Some("the wrong person typed the code")
    );
    assert_eq!(entry.by.as_ref().map(|b| b.user.as_str()), Some("ops"));
    env.cleanup().await;
}

/// The split's rank notice: the part that fell away is told its rank (so the bots give
/// its accounts their own rank roles).
#[tokio::test]
async fn a_split_notifies_the_new_rank_of_the_part_that_fell_away() {
    let env = TestEnv::new().await;
    let rules = &env.settings.rules;
    let big = i32::try_from(rules.rank(5).required_xp).expect("small");
    env.store
        .apply(&[
            ev("g:1", 0, "discord:1", grant(10)),
            ev("g:2", 0, "telegram:2", grant(big)),
            ev("l", 1_000, "discord:1", link("telegram:2", Proof::Code)),
        ])
        .await
        .expect("apply");
    sqlx::query("DELETE FROM outbox")
        .execute(&env.store.pool)
        .await
        .expect("clear");
    env.store
        .apply(&[ev("u", 2_000, "telegram:2", unlink("discord:1"))])
        .await
        .expect("apply");
    let bodies: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT body FROM outbox WHERE topic = 'rank' ORDER BY id")
            .fetch_all(&env.store.pool)
            .await
            .expect("outbox");
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(
        bodies[0]["identities"],
        serde_json::json!([{"platform": "discord", "user": "1"}])
    );
    assert_eq!(bodies[0]["new_rank"], 1);
    assert_eq!(bodies[0]["old_rank"], rules.rank_index(i64::from(big) + 10));
    env.cleanup().await;
}

/// Asserts that `ttfd rebuild --check` finds the live state to be the one a rebuild
/// computes from the stream.
async fn assert_rebuild_agrees(env: &TestEnv) {
    let outcome = rebuild_with(
        env.store.clone(),
        env.broker.clone(),
        &env.settings,
        &RebuildArgs {
            check: true,
            show: 20,
            from_snapshot: None,
        },
        false,
        CancellationToken::new(),
    )
    .await
    .expect("check runs");
    let RebuildOutcome::Checked { comparison, .. } = &outcome else {
        panic!("checked: {outcome}");
    };
    assert!(comparison.is_same(), "{outcome}");
}

/// `ttfd rebuild --check` after links and unlinks published through the pipeline: the
/// live state, built incrementally, is the one a rebuild computes from the stream.
#[tokio::test]
async fn rebuild_check_agrees_after_unlinks() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let mut events = crate::common::community(300, 12, 21);
    let now = ttfd::now_ms();
    let at = |id: &str, who: &str, payload: Payload| Event {
        ts: now - 60_000,
        ..ev(id, 0, who, payload)
    };
    // The synthetic community links each person's accounts (traffic.rs): take back the
    // most active people's.
    events.push(at(
        "ul:1",
        "discord:300000000000000000",
        unlink("telegram:500000000"),
    ));
    events.push(at(
        "ul:2",
        "website:member1@example.org",
        unlink("telegram:500000001"),
    ));
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    assert_rebuild_agrees(&env).await;
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// `ttfd export` (docs/privacy.md): one JSON document with the profile, every identity
/// with its own counters, names and preferences, the ledger by day, the links (and
/// whether they count), the audit entries about the member, and every event of theirs
/// still in the events stream, which are checked field by field against what was
/// published; nobody else's.
#[tokio::test]
async fn the_export_holds_everything_about_the_member_and_nothing_else() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let now = ttfd::now_ms() - 3_600_000;
    let at = |id: &str, ms: i64, who: &str, name: Option<&str>, payload: Payload| Event {
        id: EventId::parse(id).expect("id"),
        ts: now + ms,
        identity: Identity::parse(who).expect("identity"),
        name: name.map(str::to_owned),
        payload,
    };
    let events = vec![
        at(
            "discord:m:1",
            0,
            "discord:1",
            Some("Ann"),
            Payload::Message {
                len: None,
                chat: None,
                mult: None,
            },
        ),
        at(
            "telegram:g:1",
            1_000,
            "telegram:2",
            Some("Ann T"),
            grant(250),
        ),
        at(
            "telegram:p:1",
            2_000,
            "telegram:2",
            None,
            Payload::Prefs {
                hidden: Some(true),
                notify: None,
            },
        ),
        at(
            "link:1",
            3_000,
            "telegram:2",
            None,
            link("discord:1", Proof::Code),
        ),
        at(
            "mod:xp:1",
            4_000,
            "discord:1",
            None,
            Payload::Xp {
                amount: 40,
                reason: "event winner".into(),
                by: Some(Identity::parse("cli:ops").expect("identity")),
            },
        ),
        at("discord:m:2", 5_000, "discord:3", Some("Bo"), grant(7)),
    ];
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    let file = std::env::temp_dir().join(format!("ttfd-export-{}.json", std::process::id()));
    let out = env
        .ttfd(&[
            "export",
            "discord:1",
            "--out",
            file.to_str().expect("utf-8 path"),
        ])
        .output()
        .await
        .expect("ttfd runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("the file")).expect("JSON");
    std::fs::remove_file(&file).ok();
    assert_eq!(doc["format"], "ttfd-export/1");
    assert_eq!(
        doc["asked_for"],
        serde_json::json!({"platform": "discord", "user": "1"})
    );
    assert_eq!(doc["profile"]["xp"], 10 + 250 + 40);
    assert_eq!(doc["profile"]["hidden"], true);
    let identities = doc["identities"].as_array().expect("identities");
    assert_eq!(identities.len(), 2);
    assert_eq!(
        (
            identities[0]["platform"].clone(),
            identities[0]["name"].clone()
        ),
        ("discord".into(), "Ann".into())
    );
    assert_eq!(identities[0]["messages"], 1);
    assert_eq!(identities[1]["hidden"], true);
    assert_eq!(identities[1]["notify"], serde_json::Value::Null);
    let ledger: i64 = doc["ledger"]
        .as_array()
        .expect("ledger")
        .iter()
        .map(|d| d["xp"].as_i64().expect("xp"))
        .sum();
    assert_eq!(ledger, 300);
    assert!(
        doc["ledger"][0]["unpaid_voice"].is_object() && doc["ledger"][0]["grants_xp"].is_i64(),
        "each day with what its XP is made of: {}",
        doc["ledger"]
    );
    assert_eq!(doc["links"][0]["from"], "telegram:2");
    assert_eq!(doc["links"][0]["counts"], true);
    // Every xp event is audited (docs/moderation.md): the grant and the moderator's.
    assert_eq!(doc["audit"].as_array().expect("audit").len(), 2);
    assert_eq!(doc["audit"][0]["reason"], "event winner");
    assert_eq!(doc["audit"][0]["by"]["user"], "ops");
    let held: Vec<&str> = doc["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["envelope"]["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        held,
        [
            "discord:m:1",
            "telegram:g:1",
            "telegram:p:1",
            "link:1",
            "mod:xp:1"
        ],
        "the member's, in stream order; not Bo's"
    );
    let first = &doc["events"][0];
    assert_eq!(first["envelope"]["name"], "Ann");
    assert_eq!(first["envelope"]["kind"], "message");
    assert!(first["stream_seq"].as_u64().is_some() && first["stored_at"].is_string());
    assert!(
        doc["not_included"]
            .as_array()
            .is_some_and(|n| !n.is_empty())
    );

    let out = env
        .ttfd(&["export", "discord:404"])
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no member has the identity discord:404")
    );
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// Migration 13 on a database with users: each user's counters go to its identity with
/// the smallest id, on the day of its newest event, so an unlink after the upgrade
/// splits what is known, and `ttfd rebuild` can make it exact.
#[tokio::test]
async fn migration_13_gives_each_users_counters_to_its_first_identity() {
    use ttfd::store::MIGRATOR;

    let env = TestEnv::new().await;
    let pool = env.schema_before("before13", 20261207000013).await;
    let day = 86_400_000_i64;
    for statement in [
        format!(
            "INSERT INTO users (id, xp, messages, voice_seconds, games_played, games_won,
                                first_event_ms, last_event_ms)
             VALUES (1, 30, 3, 60, 2, 1, {}, {})",
            20_000 * day + 5,
            20_002 * day + 7
        ),
        "INSERT INTO identities (id, platform, external_id, user_id)
         VALUES (1, 'discord', '1', 1), (2, 'telegram', '2', 1)"
            .into(),
        "INSERT INTO xp_ledger (identity_id, day, xp) VALUES (1, DATE '1970-01-01' + 20000, 10),
                                                             (2, DATE '1970-01-01' + 20002, 20)"
            .into(),
        "INSERT INTO links (event_id, identity_a, identity_b, day, proof)
         VALUES ('l:1', 2, 1, DATE '1970-01-01' + 20001, 'code')"
            .into(),
    ] {
        sqlx::query(&statement)
            .execute(&pool)
            .await
            .expect("state before migration 13");
    }
    MIGRATOR.run(&pool).await.expect("migration 13");
    // identity, day, xp, messages, voice, games, won, first, last
    type Row = (i64, i32, i64, i64, i64, i64, i64, Option<i64>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT identity_id, day - DATE '1970-01-01', xp, messages, voice_seconds, games_played,
                games_won, first_ms, last_ms
         FROM xp_ledger ORDER BY identity_id, day",
    )
    .fetch_all(&pool)
    .await
    .expect("ledger");
    assert_eq!(
        rows,
        vec![
            (1, 20_000, 10, 0, 0, 0, 0, None, None),
            (
                1,
                20_002,
                0,
                3,
                60,
                2,
                1,
                Some(20_000 * day + 5),
                Some(20_002 * day + 7)
            ),
            (2, 20_002, 20, 0, 0, 0, 0, None, None),
        ]
    );
    let link: (i64, bool) = sqlx::query_as("SELECT ts_ms, excluded FROM links")
        .fetch_one(&pool)
        .await
        .expect("link");
    assert_eq!(link, (20_001 * day, false), "taken at the start of its day");
    env.cleanup().await;
}

/// The operator's CLI and a hidden member (SPEC 7.3): `ttfd top` ranks the members shown
/// (the others close up), `ttfd user` shows the member with `hidden: true` and where
/// they would stand.
#[tokio::test]
async fn the_cli_leaves_a_hidden_member_off_top_and_shows_them_to_the_operator() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let now = ttfd::now_ms() - 60_000;
    let at = |id: &str, who: &str, payload: Payload| Event {
        ts: now,
        ..ev(id, 0, who, payload)
    };
    let events = [
        at("g:1", "discord:1", grant(900)),
        at("g:2", "discord:2", grant(500)),
        at("g:3", "discord:3", grant(100)),
        at(
            "p:1",
            "discord:1",
            Payload::Prefs {
                hidden: Some(true),
                notify: None,
            },
        ),
    ];
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    let run = |args: &'static [&'static str]| {
        let mut cmd = env.ttfd(args);
        async move {
            let out = cmd.output().await.expect("ttfd runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
        }
    };
    let top = run(&["top", "--json"]).await;
    let xp: Vec<i64> = top
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["xp"].as_i64().expect("xp"))
        .collect();
    assert_eq!(xp, [500, 100], "the hidden member is on no board: {top}");
    assert_eq!(top[0]["position"], 1);
    let user = run(&["user", "discord:1", "--json"]).await;
    assert_eq!(user["hidden"], true);
    assert_eq!(
        user["standings"][0]["position"], 1,
        "where they would stand"
    );
    assert_eq!(user["standings"][0]["ranked"], 2, "among the members shown");
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// SPEC 7.4, erasure through the whole pipeline: `ttfd forget` while the member's events
/// are still arriving. Everything up to the cut leaves every projection and the events
/// stream (the forget itself included); what came after starts over as a new member,
/// also the event applied before the forget was; a redelivered old event counts for
/// nothing; `ttfd rebuild --check` agrees; only a hash is kept.
#[tokio::test]
async fn forget_erases_an_identity_through_the_pipeline_and_nothing_comes_back() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let now = ttfd::now_ms();
    let at = |id: &str, ms: i64, who: &str, name: Option<&str>, payload: Payload| Event {
        id: EventId::parse(id).expect("id"),
        ts: now + ms,
        identity: Identity::parse(who).expect("identity"),
        name: name.map(str::to_owned),
        payload,
    };
    let say = Payload::Message {
        len: None,
        chat: None,
        mult: None,
    };
    let before = vec![
        at(
            "telegram:m:1",
            -600_000,
            "telegram:2",
            Some("Tess"),
            say.clone(),
        ),
        at("telegram:g:1", -500_000, "telegram:2", None, grant(700)),
        at(
            "discord:m:1",
            -400_000,
            "discord:1",
            Some("Dan"),
            say.clone(),
        ),
        at(
            "link:1",
            -300_000,
            "discord:1",
            None,
            link("telegram:2", Proof::Code),
        ),
    ];
    // Published before the erasure, dated after it: it starts the member over.
    let after = at(
        "telegram:m:2",
        60_000,
        "telegram:2",
        Some("T2"),
        say.clone(),
    );
    let mut events = before.clone();
    events.push(after.clone());
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    // A link code of the member's and a failed redemption of theirs.
    let tess = Identity::parse("telegram:2").expect("identity");
    env.store
        .issue_link_code(&tess, now - 1_000)
        .await
        .expect("a code");
    env.store
        .redeem_link_code(&tess, "no-such-code", now - 1_000)
        .await
        .expect("a failed redemption");
    let codes_of_tess = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM link_codes WHERE external_id = '2')
                  + (SELECT count(*) FROM link_code_failures WHERE external_id = '2')",
        )
        .fetch_one(&env.store.pool)
        .await
        .expect("count")
    };
    assert_eq!(codes_of_tess().await, 2, "a code and a failure recorded");

    let out = env
        .ttfd(&["forget", "telegram:2", "--reason", "the member asked"])
        .env("USER", "ops")
        .output()
        .await
        .expect("ttfd runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("telegram:2 erased up to now"), "{said}");

    // The model of every event, the forgets included: one for each account of the
    // profile (its cut, the CLI's time, read back).
    let cut: i64 = sqlx::query_scalar("SELECT max(cut_ms) FROM forgotten")
        .fetch_one(&env.store.pool)
        .await
        .expect("the cut");
    for (n, who) in ["telegram:2", "discord:1"].into_iter().enumerate() {
        events.push(Event {
            ts: cut,
            ..at(
                &format!("mod:forget:{n}"),
                0,
                who,
                None,
                Payload::Forget {
                    reason: "the member asked".into(),
                    by: None,
                },
            )
        });
    }
    env.store.drain_standings().await.expect("standings");
    let expected = model::fold(&env.settings.rules, &events);
    compare(&env.store, &expected)
        .await
        .expect("the model's state");
    let t = env
        .store
        .profile(&Identity::parse("telegram:2").expect("identity"))
        .await
        .expect("read")
        .expect("started over");
    assert_eq!((t.xp, t.messages, t.identities.len()), (10, 1, 1));
    assert_eq!(t.display_name.as_deref(), Some("T2"));
    assert_eq!(codes_of_tess().await, 0, "link codes and failures erased");
    let d = env
        .store
        .profile(&Identity::parse("discord:1").expect("identity"))
        .await
        .expect("read");
    assert!(
        d.is_none(),
        "the linked account is erased with the member: {d:?}"
    );

    // The events stream keeps nothing of the member up to the cut.
    let held: Vec<String> = env
        .broker
        .events_of(&[Identity::parse("telegram:2").expect("identity")])
        .await
        .expect("scan")
        .into_iter()
        .map(|m| m.envelope["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(held, ["telegram:m:2"], "only what came after the cut");
    let plain: i64 = sqlx::query_scalar("SELECT count(*) FROM erasure_work")
        .fetch_one(&env.store.pool)
        .await
        .expect("count");
    assert_eq!(plain, 0, "the work, the one row with the identity, is gone");

    // An old event arriving late counts for nothing (and the replay below skips it).
    env.publish(&[at("telegram:m:0", -700_000, "telegram:2", Some("Old"), say)])
        .await;
    crate::common::eventually("the late event claimed", || async {
        let claimed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE id = 'telegram:m:0')",
        )
        .fetch_one(&env.store.pool)
        .await
        .ok()?;
        claimed.then_some(())
    })
    .await;
    let t2 = env
        .store
        .profile(&Identity::parse("telegram:2").expect("identity"))
        .await
        .expect("read")
        .expect("member");
    assert_eq!((t2.xp, t2.display_name.as_deref()), (10, Some("T2")));

    assert_rebuild_agrees(&env).await;
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// A rebuild from a snapshot taken before an erasure (SPEC 7.4) brings nothing of the
/// erased member back: the snapshot's rows of them are erased again, and what they did
/// after the cut stays.
#[tokio::test]
async fn a_rebuild_from_a_snapshot_taken_before_a_forget_brings_nothing_back() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let now = ttfd::now_ms();
    let at = |id: &str, ms: i64, who: &str, payload: Payload| Event {
        ts: now + ms,
        ..ev(id, 0, who, payload)
    };
    let mut events = vec![
        at("telegram:g:1", -500_000, "telegram:2", grant(700)),
        at("discord:g:1", -400_000, "discord:1", grant(30)),
        at(
            "link:1",
            -300_000,
            "discord:1",
            link("telegram:2", Proof::Code),
        ),
        at("telegram:g:2", 120_000, "telegram:2", grant(5)),
    ];
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    let (snapshot, _) = ttfd::replay::rebuild::snapshot_with(&env.store, &env.broker)
        .await
        .expect("snapshot");
    let out = env
        .ttfd(&["forget", "telegram:2", "--reason", "asked"])
        .output()
        .await
        .expect("ttfd runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cut: i64 = sqlx::query_scalar("SELECT max(cut_ms) FROM forgotten")
        .fetch_one(&env.store.pool)
        .await
        .expect("forgotten");
    for (n, who) in ["telegram:2", "discord:1"].into_iter().enumerate() {
        events.push(at(
            &format!("mod:forget:{n}"),
            cut - now,
            who,
            Payload::Forget {
                reason: "asked".into(),
                by: None,
            },
        ));
    }
    let outcome = rebuild_with(
        env.store.clone(),
        env.broker.clone(),
        &env.settings,
        &RebuildArgs {
            check: false,
            show: 20,
            from_snapshot: Some(snapshot),
        },
        false,
        CancellationToken::new(),
    )
    .await
    .expect("the rebuild runs");
    assert!(
        matches!(outcome, RebuildOutcome::Swapped { .. }),
        "{outcome}"
    );
    env.store.drain_standings().await.expect("standings");
    let expected = model::fold(&env.settings.rules, &events);
    compare(&env.store, &expected)
        .await
        .expect("the model's state");
    let t = env
        .store
        .profile(&Identity::parse("telegram:2").expect("identity"))
        .await
        .expect("read")
        .expect("started over");
    assert_eq!((t.xp, t.identities.len()), (5, 1));
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}

/// A merge and the end of the merged user in one standings round: a member's stored
/// standings move to the user they were merged into, and when that user then loses its
/// last identity (both forgotten), they go with it. The refresher once carried them to
/// the user after it was gone, which left a ranked user with no identity (found by the
/// pipeline's property test).
#[tokio::test]
async fn standings_merged_into_a_user_gone_in_the_same_round_go_with_it() {
    let env = TestEnv::new().await;
    let forget = |id: &str, ts: i64, who: &str| {
        ev(
            id,
            ts,
            who,
            Payload::Forget {
                reason: "asked".into(),
                by: None,
            },
        )
    };
    let events = vec![
        ev("l-1", 1_000, "telegram:l", grant(10)),
        ev("s-1", 2_000, "telegram:s", grant(5)),
        ev("s-2", 3_000, "telegram:s", link("discord:l", Proof::Code)),
        ev("l-2", 3_500, "discord:l", grant(3)),
        ev("l-3", 4_000, "telegram:s", link("telegram:l", Proof::Code)),
        forget("f-1", 5_000, "telegram:s"),
        forget("f-2", 6_000, "telegram:l"),
        forget("f-3", 7_000, "discord:l"),
    ];
    for e in &events[..2] {
        retrying(&env.store, e).await;
    }
    // Both members' rows are stored; the rest comes to the refresher in one round.
    env.store.drain_standings().await.expect("standings");
    for e in &events[2..] {
        retrying(&env.store, e).await;
    }
    crate::common::finish_erasures(&env.store, &events).await;
    env.store.drain_standings().await.expect("standings");
    let expected = model::fold(&env.settings.rules, &events);
    compare(&env.store, &expected)
        .await
        .expect("the model's standings: nobody is left to rank");
    env.cleanup().await;
}
