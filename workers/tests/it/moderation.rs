//! The moderators' XP tools and the audit log (docs/moderation.md), driven through the
//! built `ttfd` against a running sync consumer.

use tokio_util::sync::CancellationToken;
use ttfd::shared::wire::EventId;
use ttfd::shared::{Event, Identity, Payload};

use crate::common::TestEnv;

/// `ttfd <args>` run by the operator `ops`, with `extra` environment: exit code,
/// stdout, stderr.
async fn ttfd_as_ops(
    env: &TestEnv,
    args: &[&str],
    extra: &[(&str, &str)],
) -> (i32, String, String) {
    let out = env
        .ttfd(args)
        .env("USER", "ops")
        .envs(extra.iter().copied())
        .output()
        .await
        .expect("ttfd runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every verb from the CLI: the reply says the new total; a retried request counts
/// once; set and reset publish the difference; each refusal says why in one line; the
/// audit lists who did what and why, newest first, and a rebuild finds the same audit.
#[tokio::test]
async fn an_operator_adjusts_xp_from_the_cli_and_the_audit_shows_who_and_why() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let hello = Event {
        id: EventId::parse("discord:msg:1").expect("id"),
        ts: ttfd::now_ms() - 60_000,
        identity: Identity::parse("discord:1").expect("identity"),
        name: Some("Ann".into()),
        payload: Payload::Message {
            len: None,
            chat: None,
            mult: None,
        },
    };
    env.publish(std::slice::from_ref(&hello)).await;
    env.wait_for_model(std::slice::from_ref(&hello)).await;
    let none: &[(&str, &str)] = &[];

    let add = [
        "xp",
        "add",
        "discord:1",
        "500",
        "--reason",
        "event winner",
        "--request-id",
        "r1",
    ];
    let (code, out, err) = ttfd_as_ops(&env, &add, none).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("+500 XP for discord:1: now 510 XP"), "{out}");
    let (code, out, err) = ttfd_as_ops(&env, &add, none).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("counted once") && out.contains("now 510 XP"),
        "{out}"
    );

    let set = [
        "xp",
        "set",
        "discord:1",
        "1000",
        "--reason",
        "fix",
        "--json",
    ];
    let (code, out, err) = ttfd_as_ops(&env, &set, none).await;
    assert_eq!(code, 0, "{out}{err}");
    let done: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (done["amount"].clone(), done["xp"].clone()),
        (490.into(), 1000.into())
    );

    let (code, out, err) = ttfd_as_ops(
        &env,
        &["xp", "reset", "discord:1", "--reason", "start over"],
        none,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("-1,000 XP for discord:1: now 0 XP"), "{out}");

    for (args, says) in [
        (
            &["xp", "reset", "discord:1", "--reason", "again"][..],
            "nothing to do",
        ),
        (
            &["xp", "add", "discord:404", "5", "--reason", "x"][..],
            "no member has the identity discord:404",
        ),
        (
            &["xp", "add", "discord:1", "5", "--reason", " "][..],
            "give a reason",
        ),
        (
            &["xp", "add", "discord:1", "20000", "--reason", "big"][..],
            "moderation.max_amount",
        ),
        (
            &["xp", "remove", "discord:1", "0", "--reason", "none"][..],
            "at least 1",
        ),
    ] {
        let (code, out, err) = ttfd_as_ops(&env, args, none).await;
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let limited = [("TTFD__MODERATION__ACTIONS_PER_HOUR", "3")];
    let (code, _, err) = ttfd_as_ops(
        &env,
        &["xp", "add", "discord:1", "5", "--reason", "more"],
        &limited,
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("cli:ops made 3 adjustments in the last hour"),
        "{err}"
    );

    let (code, out, err) = ttfd_as_ops(&env, &["audit", "--by", "cli:ops", "--json"], none).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let seen: Vec<(i64, String)> = entries
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            assert_eq!(
                e["by"],
                serde_json::json!({"platform": "cli", "user": "ops"})
            );
            assert_eq!(e["member"]["user"], "1");
            (
                e["amount"].as_i64().expect("amount"),
                e["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (-1000, "start over".into()),
            (490, "fix".into()),
            (500, "event winner".into())
        ],
        "newest first"
    );
    let (_, out, _) = ttfd_as_ops(&env, &["audit", "--member", "discord:1"], none).await;
    assert!(
        out.contains("+500 XP to discord:1 by cli:ops: \"event winner\""),
        "{out}"
    );
    assert!(out.contains("3 of 3 entries"), "{out}");
    let (_, out, _) = ttfd_as_ops(&env, &["audit", "--by", "discord:9"], none).await;
    assert!(out.contains("no audit entries"), "{out}");

    let (code, out, err) = ttfd_as_ops(&env, &["rebuild", "--check"], none).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit equal"), "{out}");
    stop.cancel();
    worker.await.expect("worker stops");
    env.cleanup().await;
}

/// `ttfd unlink` (SPEC 7.4) through the built binary: the two accounts come apart, each
/// with what it earned; the audit shows who and why; a second run finds nothing left to
/// take back, and a pair that no link joins directly is refused, naming the links there
/// are.
#[tokio::test]
async fn an_operator_unlinks_a_wrong_link_from_the_cli() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let now = ttfd::now_ms() - 60_000;
    let event = |id: &str, who: &str, payload: Payload| Event {
        id: EventId::parse(id).expect("id"),
        ts: now,
        identity: Identity::parse(who).expect("identity"),
        name: None,
        payload,
    };
    let grant = |amount| Payload::Xp {
        amount,
        reason: "quiz".into(),
        by: None,
    };
    let link = |other: &str| Payload::Link {
        other: Identity::parse(other).expect("identity"),
        proof: ttfd::shared::Proof::Code,
        by: None,
    };
    let events = [
        event("g:1", "discord:1", grant(300)),
        event("g:2", "telegram:2", grant(200)),
        event("g:3", "website:3", grant(100)),
        event("l:12", "telegram:2", link("discord:1")),
        event("l:23", "website:3", link("telegram:2")),
    ];
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    let none: &[(&str, &str)] = &[];
    let unlink = [
        "unlink",
        "telegram:2",
        "discord:1",
        "--reason",
        "linked by mistake",
    ];
    let (code, out, err) = ttfd_as_ops(&env, &unlink, none).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("telegram:2 unlinked from discord:1: the profiles are apart"),
        "{out}"
    );
    let xp = |who: &str| {
        let store = env.store.clone();
        let who = Identity::parse(who).expect("identity");
        async move {
            store
                .profile(&who)
                .await
                .expect("read")
                .expect("a profile")
                .xp
        }
    };
    assert_eq!((xp("discord:1").await, xp("website:3").await), (300, 300));

    let (code, out, err) = ttfd_as_ops(&env, &unlink, none).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("no link joins telegram:2 and discord:1 directly")
            && err.contains("website:3"),
        "{err}"
    );
    let (code, out, _) = ttfd_as_ops(&env, &["audit", "--json"], none).await;
    assert_eq!(code, 0);
    let log: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let entry = &log[0];
    assert_eq!(entry["kind"], "unlink");
    assert_eq!(entry["reason"], "linked by mistake");
    assert_eq!(entry["by"]["user"], "ops");
    stop.cancel();
    worker.await.expect("worker");
    env.cleanup().await;
}
