//! `ttfd replay` and `ttfd rebuild` against real PostgreSQL and NATS JetStream: after a
//! restore, beside live replicas, interrupted and resumed, with a rule change, with a
//! stream that lost its first events, and the check. The reference model
//! (`ttfd_shared::model::fold`) says what the database must hold.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::{TestEnv, community, eventually};
use bytes::Bytes;
use secrecy::ExposeSecret;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use ttfd::replay::rebuild::{RebuildArgs, RebuildOutcome, rebuild_with};
use ttfd::replay::{ReplayArgs, Since, replay_with};
use ttfd::settings::Settings;
use ttfd::shared::model;
use ttfd::shared::wire::EventId;
use ttfd::shared::{Event, Payload};
use ttfd::store::Store;
use ttfd::store::rebuild::FRESH_PREFIX;

fn replay_args(since: Since) -> ReplayArgs {
    ReplayArgs {
        since,
        allow_gap: false,
    }
}

fn check_args(check: bool) -> RebuildArgs {
    RebuildArgs {
        check,
        show: 20,
        from_snapshot: None,
    }
}

/// Runs a replay in-process over the test's store and broker.
async fn replay(
    env: &TestEnv,
    since: Since,
    stop: CancellationToken,
) -> ttfd::replay::ReplayReport {
    let broker = env.broker.clone();
    replay_with(
        env.store.clone(),
        broker,
        &env.settings,
        &replay_args(since),
        false,
        stop,
    )
    .await
    .expect("the replay runs")
}

async fn rebuild(
    env: &TestEnv,
    settings: &Settings,
    check: bool,
) -> anyhow::Result<RebuildOutcome> {
    rebuild_with(
        env.store.clone(),
        env.broker.clone(),
        settings,
        &check_args(check),
        false,
        CancellationToken::new(),
    )
    .await
}

async fn consumer_names(env: &TestEnv) -> Vec<String> {
    use futures::StreamExt;
    let stream = env
        .broker
        .js
        .get_stream(env.broker.subjects.events_stream())
        .await
        .expect("stream");
    stream
        .consumer_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|n| n.expect("name"))
        .collect()
}

async fn scalar(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&store.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs `ttfd` with `args` in this test's world; returns (exit code, stdout, stderr).
async fn ttfd(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let out = env.ttfd(args).output().await.expect("ttfd runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ttfd-{}-{name}", std::process::id()))
}

async fn run(cmd: &str, args: &[&str]) {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{cmd} runs: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The issue's test: the database loses its last minutes (an older dump is restored),
/// `ttfd replay --since <before the dump>` brings back exactly the state of a run that
/// never failed.
#[tokio::test]
async fn a_database_restored_from_an_older_dump_is_made_whole_by_replay() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let early = community(400, 25, 1);
    env.publish(&early).await;
    env.wait_for_model(&early).await;

    // The backup. The replay starts a little before it: what it re-delivers from the
    // backup's own past is skipped by the idempotency record.
    let since = time::OffsetDateTime::now_utc() - time::Duration::seconds(2);
    let url = env.settings.database.url.expose_secret().to_owned();
    let dump = temp_path("backup.dump");
    let dump_path = dump.to_str().expect("utf-8 path");
    run("pg_dump", &["--format=custom", "--file", dump_path, &url]).await;

    // The last minutes, applied, then lost.
    let late = community(300, 25, 2);
    env.publish(&late).await;
    let all: Vec<Event> = early.iter().chain(&late).cloned().collect();
    env.wait_for_model(&all).await;
    stop.cancel();
    worker.await.expect("worker stops");
    run(
        "pg_restore",
        &[
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--dbname",
            &url,
            dump_path,
        ],
    )
    .await;
    let _ = std::fs::remove_file(&dump);
    let expected_early = model::fold(&env.settings.rules, &early);
    crate::common::compare(&env.store, &expected_early)
        .await
        .expect("the restored database is the backup's state");

    // The replicas come back (their consumer already acked the lost events), and the
    // operator replays.
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let since_arg = since.format(&Rfc3339).expect("format");
    let (code, stdout, stderr) = ttfd(&env, &["replay", "--since", &since_arg]).await;
    assert_eq!(code, 0, "replay succeeds: {stdout}{stderr}");
    assert!(stdout.contains("replay complete"), "{stdout}");
    env.wait_for_model(&all).await;
    assert!(
        !consumer_names(&env)
            .await
            .iter()
            .any(|n| n.contains("replay")),
        "a finished replay deletes its consumer"
    );
    stop.cancel();
    worker.await.expect("worker stops");
    env.cleanup().await;
}

/// A replay beside a running replica (and new events): the same final state, the
/// shared consumer untouched, dead letters not dead-lettered twice.
#[tokio::test]
async fn a_replay_beside_a_running_replica_changes_nothing_already_applied() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let first = community(300, 20, 3);
    env.publish(&first).await;
    let bad = env
        .broker
        .publish_raw(
            env.broker.subjects.event("discord", "message"),
            "bad:1",
            Bytes::from_static(b"not messagepack"),
        )
        .await
        .expect("publish");
    bad.await.expect("stored");
    env.wait_for_model(&first).await;
    let dlq = || async {
        let mut s = env
            .broker
            .js
            .get_stream(env.broker.subjects.dlq_stream())
            .await
            .expect("dlq");
        s.info().await.expect("info").state.messages
    };
    eventually("the bad message on the dead-letter stream", || async {
        (dlq().await == 1).then_some(())
    })
    .await;
    let sync_before = env.broker.sync_consumer().await.expect("sync consumer");
    let sync_config = sync_before.cached_info().config.clone();

    let second = community(200, 20, 4);
    let publisher = {
        let env_broker = env.broker.clone();
        let second = second.clone();
        tokio::spawn(async move {
            for chunk in second.chunks(20) {
                for e in chunk {
                    env_broker
                        .publish_event(e)
                        .await
                        .expect("publish")
                        .await
                        .expect("stored");
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let report = replay(&env, Since::Sequence(1), CancellationToken::new()).await;
    publisher.await.expect("published");
    assert!(report.complete && !report.resumed, "{report}");
    assert!(
        report.duplicates as usize >= first.len(),
        "everything the replica applied is skipped: {report}"
    );
    assert_eq!(
        report.dead_lettered, 0,
        "the bad message was counted before: {report}"
    );
    let all: Vec<Event> = first.iter().chain(&second).cloned().collect();
    env.wait_for_model(&all).await;
    assert_eq!(dlq().await, 1, "no second dead letter");
    let mut sync_after = env.broker.sync_consumer().await.expect("sync consumer");
    assert_eq!(sync_after.info().await.expect("info").config, sync_config);
    assert!(
        !consumer_names(&env)
            .await
            .iter()
            .any(|n| n.contains("replay"))
    );
    stop.cancel();
    worker.await.expect("worker stops");
    env.cleanup().await;
}

/// Interrupted, a replay keeps its place (its consumer's ack floor) and its end; run
/// again, it goes on from there and stops at the same end.
#[tokio::test]
async fn an_interrupted_replay_resumes_where_it_stopped() {
    let env = TestEnv::with(|s| s.sync.batch_size = 10).await;
    // No replica runs: only the replay applies anything.
    let events = community(800, 30, 5);
    env.publish(&events).await;
    let since = Since::Sequence(1);
    let name = since.consumer_name(env.broker.subjects.prefix());

    let stop = CancellationToken::new();
    let watcher = {
        let (broker, stop, name) = (env.broker.clone(), stop.clone(), name.clone());
        tokio::spawn(async move {
            loop {
                let floor = match broker
                    .js
                    .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                        &name,
                        broker.subjects.events_stream(),
                    )
                    .await
                {
                    Ok(c) => c.cached_info().ack_floor.stream_sequence,
                    Err(_) => 0,
                };
                if floor >= 200 {
                    stop.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let first = replay(&env, since, stop).await;
    watcher.await.expect("watcher");
    assert!(!first.complete, "interrupted: {first}");
    assert_eq!(first.end, 800);
    let applied_first = scalar(&env.store, "SELECT count(*) FROM processed_events").await;
    assert!((200..800).contains(&applied_first), "{applied_first}");
    assert!(
        consumer_names(&env).await.contains(&name),
        "the consumer stays"
    );

    // Events published after the first start are past the replay's end.
    let after = community(50, 30, 6);
    env.publish(&after).await;

    let second = replay(&env, since, CancellationToken::new()).await;
    assert!(second.complete && second.resumed, "{second}");
    assert_eq!(second.end, 800, "the end is the one of the first start");
    assert!(second.from >= 200, "resumed from the ack floor: {second}");
    assert!(
        second.messages <= 800 - second.from + 10 * 4,
        "only what was left (and what was in flight) is delivered again: {second}"
    );
    env.wait_for_model(&events).await;
    assert!(!consumer_names(&env).await.contains(&name));
    env.cleanup().await;
}

/// A rebuild beside a running replica with events arriving: the swapped-in tables hold
/// exactly the model's state, and the replica goes on applying to them.
#[tokio::test]
async fn a_rebuild_swaps_in_the_same_state_while_a_replica_runs() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let first = community(500, 25, 7);
    env.publish(&first).await;
    env.wait_for_model(&first).await;
    let outbox_before = scalar(&env.store, "SELECT count(*) FROM outbox").await;

    let second = community(300, 25, 8);
    let publisher = {
        let broker = env.broker.clone();
        let second = second.clone();
        tokio::spawn(async move {
            for e in &second {
                broker
                    .publish_event(e)
                    .await
                    .expect("publish")
                    .await
                    .expect("stored");
            }
        })
    };
    let outcome = rebuild(&env, &env.settings, false)
        .await
        .expect("the rebuild runs");
    publisher.await.expect("published");
    let RebuildOutcome::Swapped { replaced, stats } = &outcome else {
        panic!("swapped: {outcome}");
    };
    assert!(stats.applied as usize >= first.len(), "{outcome}");
    // The replica, whose identity cache and prepared statements knew the old tables,
    // goes on with the new ones.
    let third = community(200, 30, 12);
    env.publish(&third).await;
    let all: Vec<Event> = first.iter().chain(&second).chain(&third).cloned().collect();
    env.wait_for_model(&all).await;
    assert!(
        scalar(
            &env.store,
            &format!("SELECT count(*) FROM {replaced}.users")
        )
        .await
            > 0,
        "the replaced tables are kept"
    );
    assert!(
        env.store
            .schemas_named(FRESH_PREFIX)
            .await
            .expect("schemas")
            .is_empty(),
        "the build schema is gone"
    );
    // The rebuild wrote no notification; the replica's own keep coming.
    let outbox_after = scalar(&env.store, "SELECT count(*) FROM outbox").await;
    let replica_notices = outbox_after - outbox_before;
    assert!(
        replica_notices <= (second.len() + third.len()) as i64,
        "a rebuild announces nothing: {outbox_before} then {outbox_after}"
    );
    stop.cancel();
    worker.await.expect("worker stops");
    env.cleanup().await;
}

/// A rule fix applies to history: after a rebuild with a new `rules.message_xp`, the
/// state is the new rule's model of every event; no rank-up is announced for it.
#[tokio::test]
async fn a_rebuild_with_a_changed_rule_gives_that_rules_model() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let events = community(500, 20, 9);
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    stop.cancel();
    worker.await.expect("worker stops");
    let outbox_before = scalar(&env.store, "SELECT count(*) FROM outbox").await;
    let ids = || async {
        sqlx::query_as::<_, (i64, String, String, i64)>(
            "SELECT id, platform, external_id, user_id FROM identities ORDER BY id",
        )
        .fetch_all(&env.store.pool)
        .await
        .expect("identities")
    };
    let ids_before = ids().await;

    let mut fixed = env.settings.clone();
    fixed.rules.message_xp += 7;
    let new_model = model::fold(&fixed.rules, &events);
    assert!(
        crate::common::compare(&env.store, &new_model)
            .await
            .is_err(),
        "the rule change makes a difference"
    );
    // The check previews the change and changes nothing.
    let preview = rebuild(&env, &fixed, true).await.expect("check runs");
    let RebuildOutcome::Checked { comparison, .. } = &preview else {
        panic!("checked: {preview}");
    };
    assert!(comparison.user_differences > 0, "{preview}");

    let outcome = rebuild(&env, &fixed, false)
        .await
        .expect("the rebuild runs");
    assert!(
        matches!(outcome, RebuildOutcome::Swapped { .. }),
        "{outcome}"
    );
    crate::common::compare(&env.store, &new_model)
        .await
        .expect("the history follows the new rule");
    assert_eq!(
        ids().await,
        ids_before,
        "identities and users keep their ids (profile addresses stay valid)"
    );
    assert_eq!(
        scalar(&env.store, "SELECT count(*) FROM outbox").await,
        outbox_before,
        "a rebuild writes no notification"
    );
    let after = rebuild(&env, &fixed, true).await.expect("check runs");
    let RebuildOutcome::Checked { comparison, .. } = &after else {
        panic!("checked: {after}");
    };
    assert!(comparison.is_same(), "{after}");
    env.cleanup().await;
}

/// No rebuild from a stream whose first events are gone: a one-line refusal, nothing
/// changed.
#[tokio::test]
async fn a_rebuild_refuses_when_the_stream_lost_its_first_events() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let events = community(100, 10, 10);
    env.publish(&events).await;
    env.wait_for_model(&events).await;
    stop.cancel();
    worker.await.expect("worker stops");
    let stream = env
        .broker
        .js
        .get_stream(env.broker.subjects.events_stream())
        .await
        .expect("stream");
    stream.purge().sequence(11).await.expect("purge 1..10");

    let (code, stdout, stderr) = ttfd(&env, &["rebuild"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("no longer holds the first events")
            && stderr.contains("sequences 1 to 10 were removed"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let (code, _, stderr) = ttfd(&env, &["rebuild", "--check"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no longer holds the first events"),
        "{stderr}"
    );
    env.wait_for_model(&events).await;
    assert!(
        env.store
            .schemas_named("ttfd_re")
            .await
            .expect("schemas")
            .is_empty()
    );

    // A replay from before the gap is refused the same way, unless told.
    let (code, _, stderr) = ttfd(&env, &["replay", "--since", "1"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--allow-gap"), "{stderr}");
    let (code, stdout, stderr) = ttfd(&env, &["replay", "--since", "1", "--allow-gap"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    env.cleanup().await;
}

/// The check: no difference after a clean run; the tampered user after tampering, with
/// exit code 1; no scratch schema left either way.
#[tokio::test]
async fn the_check_finds_nothing_after_a_clean_run_and_finds_a_tampered_user() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let events = community(300, 15, 11);
    env.publish(&events).await;
    env.wait_for_model(&events).await;

    let (code, stdout, stderr) = ttfd(&env, &["rebuild", "--check"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("no difference"), "{stdout}");

    let (platform, user): (String, String) = sqlx::query_as(
        "SELECT i.platform, i.external_id FROM identities i JOIN users u ON u.id = i.user_id
         WHERE u.merged_into IS NULL AND u.xp > 0 ORDER BY i.id LIMIT 1",
    )
    .fetch_one(&env.store.pool)
    .await
    .expect("a user");
    sqlx::query(
        "UPDATE users SET xp = xp + 1000
         WHERE id = (SELECT user_id FROM identities WHERE platform = $1 AND external_id = $2)",
    )
    .bind(&platform)
    .bind(&user)
    .execute(&env.store.pool)
    .await
    .expect("tamper");
    let (code, stdout, stderr) = ttfd(&env, &["rebuild", "--check"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("DIFFERENCES: 1 users differ")
            && stdout.contains(&format!("{platform}:{user}")),
        "{stdout}"
    );
    sqlx::query(
        "UPDATE users SET xp = xp - 1000
         WHERE id = (SELECT user_id FROM identities WHERE platform = $1 AND external_id = $2)",
    )
    .bind(&platform)
    .bind(&user)
    .execute(&env.store.pool)
    .await
    .expect("undo");

    // A standing changed behind the refresher's back, and a block miscounted.
    sqlx::query(
        "UPDATE standings SET xp = xp + 7
         WHERE period = (SELECT id FROM standing_periods WHERE key = 'all') AND user_id =
             (SELECT user_id FROM identities WHERE platform = $1 AND external_id = $2)",
    )
    .bind(&platform)
    .bind(&user)
    .execute(&env.store.pool)
    .await
    .expect("tamper with a standing");
    let (code, stdout, stderr) = ttfd(&env, &["rebuild", "--check"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("0 users differ")
            && stdout.contains("1 standings differ")
            && stdout.contains(&format!("standing all of {platform}:{user}")),
        "{stdout}"
    );
    sqlx::query(
        "UPDATE standing_blocks SET members = members + 1
         WHERE period = (SELECT id FROM standing_periods WHERE key = 'all')",
    )
    .execute(&env.store.pool)
    .await
    .expect("tamper with the blocks");
    let (code, stdout, _) = ttfd(&env, &["rebuild", "--check"]).await;
    assert_eq!(code, 1);
    assert!(stdout.contains("standing all of block ("), "{stdout}");
    assert!(
        env.store
            .schemas_named("ttfd_rebuild_")
            .await
            .expect("schemas")
            .is_empty()
    );

    // A rebuild swaps in standings recomputed from the ledger: the check is clean again.
    let (code, stdout, stderr) = ttfd(&env, &["rebuild"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = ttfd(&env, &["rebuild", "--check"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("standings equal"), "{stdout}");
    assert_eq!(
        env.store
            .schemas_named("ttfd_replaced_")
            .await
            .expect("schemas")
            .len(),
        1,
        "the replaced tables are kept"
    );
    stop.cancel();
    worker.await.expect("worker stops");
    env.cleanup().await;
}

/// The swap under its lock: a batch that comes while the live tables are locked waits,
/// then lands in the swapped-in tables, its stale identity ids caught and retried.
#[tokio::test]
async fn a_batch_waiting_on_the_swap_lands_in_the_new_tables() {
    let env = TestEnv::new().await;
    let now = ttfd::now_ms();
    let grant = move |id: &str, who: &str, amount: i32| Event {
        id: ttfd::shared::wire::EventId::parse(id).expect("id"),
        ts: now,
        identity: ttfd::shared::Identity::parse(who).expect("identity"),
        name: None,
        payload: ttfd::shared::Payload::Xp {
            amount,
            reason: "r".into(),
            by: None,
        },
    };
    env.store
        .apply(&[grant("g:1", "discord:1", 5)])
        .await
        .expect("apply");
    // The fresh tables hold the same event, under other identity ids.
    let fresh_schema = format!("{FRESH_PREFIX}test");
    let fresh = env
        .store
        .create_fresh(
            &env.settings.database,
            &fresh_schema,
            env.settings.rules.clone(),
            2,
        )
        .await
        .expect("fresh tables");
    fresh
        .apply(&[grant("g:0", "telegram:9", 1), grant("g:1", "discord:1", 5)])
        .await
        .expect("apply fresh");

    let mut tx = env.store.lock_projections("public").await.expect("lock");
    let store = env.store.clone();
    let mut waiting = tokio::spawn(async move {
        let mut result = store.apply(&[grant("g:2", "discord:1", 7)]).await;
        // What the sync worker does with a transient error: try again.
        while let Err(e) = &result {
            assert!(e.is_transient(), "{e}");
            result = store.apply(&[grant("g:2", "discord:1", 7)]).await;
        }
        result.expect("applied")
    });
    // Bounded wait for something that must not happen: the batch stays blocked.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a batch waits while the projections are locked"
    );
    ttfd::store::rebuild::swap_in(&mut tx, "public", &fresh_schema, "ttfd_replaced_test")
        .await
        .expect("swap");
    tx.commit().await.expect("commit");
    let applied = tokio::time::timeout(crate::common::TIMEOUT, waiting)
        .await
        .expect("the batch goes on after the swap")
        .expect("task");
    assert_eq!(applied.applied, 1);
    let discord = env
        .store
        .profile(&ttfd::shared::Identity::parse("discord:1").expect("id"))
        .await
        .expect("profile")
        .expect("user");
    assert_eq!(
        discord.xp, 12,
        "5 from the fresh tables, 7 from the waiting batch"
    );
    assert_eq!(
        scalar(
            &env.store,
            "SELECT count(*) FROM ttfd_replaced_test.processed_events WHERE id = 'g:2'"
        )
        .await,
        0,
        "nothing went to the replaced tables"
    );
    fresh.pool.close().await;
    env.cleanup().await;
}

/// Publishes `events` to the running replica, waits until they are applied and acked
/// (the replica acks after it commits), and snapshots the projections: the snapshot's
/// name and the stream sequence it covers.
async fn applied_and_snapshotted(env: &TestEnv, events: &[Event]) -> (String, u64) {
    env.publish(events).await;
    env.wait_for_model(events).await;
    eventually("the replica's ack floor at the last event", || async {
        let mut c = env.broker.sync_consumer().await.ok()?;
        let floor = c.info().await.ok()?.ack_floor.stream_sequence;
        (floor == events.len() as u64).then_some(())
    })
    .await;
    ttfd::replay::rebuild::snapshot_with(&env.store, &env.broker)
        .await
        .expect("snapshot")
}

/// Removes the events stream's messages before sequence `keep_from`, as retention does.
async fn purge_before(env: &TestEnv, keep_from: u64) {
    env.broker
        .js
        .get_stream(env.broker.subjects.events_stream())
        .await
        .expect("stream")
        .purge()
        .sequence(keep_from)
        .await
        .expect("purge");
}

/// Rebuilds in-process from `snapshot` and the retained stream.
async fn rebuild_from(env: &TestEnv, snapshot: &str) -> RebuildOutcome {
    rebuild_with(
        env.store.clone(),
        env.broker.clone(),
        &env.settings,
        &RebuildArgs {
            check: false,
            show: 20,
            from_snapshot: Some(snapshot.to_owned()),
        },
        false,
        CancellationToken::new(),
    )
    .await
    .expect("the rebuild from the snapshot runs")
}

/// Past the stream's retention, a snapshot taken since stands in for the lost events:
/// the rebuild starts from it, then the retained stream; an older snapshot is refused.
#[tokio::test]
async fn a_rebuild_from_a_snapshot_covers_the_events_the_stream_lost() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let early = community(300, 20, 13);
    let (snapshot, covers) = applied_and_snapshotted(&env, &early).await;
    assert_eq!(
        covers,
        early.len() as u64,
        "the snapshot covers what was acked"
    );
    let late = community(200, 20, 14);
    env.publish(&late).await;
    let all: Vec<Event> = early.iter().chain(&late).cloned().collect();
    env.wait_for_model(&all).await;
    stop.cancel();
    worker.await.expect("worker stops");
    let ids = || async {
        sqlx::query_as::<_, (i64, String, String, i64)>(
            "SELECT id, platform, external_id, user_id FROM identities ORDER BY id",
        )
        .fetch_all(&env.store.pool)
        .await
        .expect("identities")
    };
    let ids_before = ids().await;

    // Retention removes the early events.
    purge_before(&env, covers + 1).await;
    let refused = rebuild(&env, &env.settings, false)
        .await
        .expect_err("refused without the snapshot")
        .to_string();
    assert!(refused.contains("--from-snapshot"), "{refused}");

    let outcome = rebuild_from(&env, &snapshot).await;
    let RebuildOutcome::Swapped { stats, .. } = &outcome else {
        panic!("swapped: {outcome}");
    };
    assert_eq!(
        stats.applied as usize,
        late.len(),
        "only the retained events: {outcome}"
    );
    crate::common::compare(&env.store, &model::fold(&env.settings.rules, &all))
        .await
        .expect("the snapshot and the stream make the whole state");
    assert_eq!(ids().await, ids_before, "ids kept");

    // A snapshot older than what the stream still holds leaves a gap: refused.
    purge_before(&env, covers + 10).await;
    let (code, _, stderr) = ttfd(&env, &["rebuild", "--from-snapshot", &snapshot]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "sequences {} to {} are lost",
            covers + 1,
            covers + 9
        )),
        "{stderr}"
    );
    env.cleanup().await;
}

/// A snapshot taken before migration 6 keeps message minutes in `message_buckets`; a
/// rebuild from it puts them on the ledger rows, so a later message in one of those
/// minutes pays nothing again.
#[tokio::test]
async fn a_snapshot_from_before_the_minute_bitmaps_keeps_its_minutes() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let worker = env.spawn_worker(stop.clone()).await;
    let early = community(300, 20, 21);
    let (snapshot, covers) = applied_and_snapshotted(&env, &early).await;
    // The snapshot as a version before migration 6 wrote it.
    for statement in [
        format!(
            "CREATE TABLE {snapshot}.message_buckets AS
             SELECT l.identity_id, (l.day - DATE '1970-01-01') * 1440::int8 + m AS minute
             FROM {snapshot}.xp_ledger l, generate_series(0, 1439) AS m
             WHERE substring(l.minutes::text, m + 1, 1) = '1'"
        ),
        format!("ALTER TABLE {snapshot}.xp_ledger DROP COLUMN minutes"),
    ] {
        sqlx::query(&statement)
            .execute(&env.store.pool)
            .await
            .expect("old snapshot format");
    }
    // More messages in minutes that already paid.
    let late: Vec<Event> = early
        .iter()
        .filter(|e| match e.payload {
            Payload::Message { len, .. } => env.settings.rules.message_is_eligible(len),
            _ => false,
        })
        .take(40)
        .map(|e| Event {
            id: EventId::parse(&format!("again:{}", e.id.as_str())).expect("id"),
            ..e.clone()
        })
        .collect();
    assert_eq!(late.len(), 40, "enough eligible messages");
    env.publish(&late).await;
    let all: Vec<Event> = early.iter().chain(&late).cloned().collect();
    env.wait_for_model(&all).await;
    stop.cancel();
    worker.await.expect("worker stops");

    purge_before(&env, covers + 1).await;
    let outcome = rebuild_from(&env, &snapshot).await;
    assert!(
        matches!(outcome, RebuildOutcome::Swapped { .. }),
        "swapped: {outcome}"
    );
    crate::common::compare(&env.store, &model::fold(&env.settings.rules, &all))
        .await
        .expect("each minute paid once");
    env.cleanup().await;
}
