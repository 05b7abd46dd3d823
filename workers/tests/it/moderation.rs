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
