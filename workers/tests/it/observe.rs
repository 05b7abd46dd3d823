//! Observability end to end: a sync run, then `GET /metrics` shows what it did; the
//! backlog gauges follow the consumer and the outbox; `/readyz` fails while PostgreSQL
//! is unreachable; the `sync` and `query` roles serve the endpoints on
//! `metrics.listen`, and `log.format = "json"` makes every log line JSON.

use std::time::Duration;

use crate::common::{Outage, TestEnv, announced, eventually};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStderr;
use tokio_util::sync::CancellationToken;
use ttfd::broker::Broker;
use ttfd::metrics::Metrics;
use ttfd::observe::sync::SyncMetrics;
use ttfd::observe::{OpsServer, Readiness};
use ttfd::query::QueryClient;
use ttfd::shared::wire::{EventId, Proof};
use ttfd::shared::{Event, Identity, Payload};
use ttfd::sync::SyncWorker;

const TS: i64 = 1_793_491_200_000;

fn ev(id: &str, who: &str, payload: Payload) -> Event {
    Event {
        id: EventId::parse(id).expect("id"),
        ts: TS,
        identity: Identity::parse(who).expect("identity"),
        name: None,
        payload,
    }
}

fn message(n: i64, who: &str) -> Event {
    Event {
        ts: TS + n * 60_000,
        ..ev(
            &format!("discord:msg:{n}"),
            who,
            Payload::Message {
                len: Some(12),
                chat: None,
                mult: None,
            },
        )
    }
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The value of one sample line (`name{labels} value`) of a Prometheus text page.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until every `(series, value)` holds.
async fn metrics_show(base: &str, expected: &[(&str, f64)]) -> String {
    let url = format!("{base}/metrics");
    eventually(&format!("/metrics to show {expected:?}"), || {
        let url = url.clone();
        async move {
            let (status, text) = get(&url).await;
            (status == 200
                && expected
                    .iter()
                    .all(|(series, value)| sample(&text, series) == Some(*value)))
            .then_some(text)
        }
    })
    .await
}

#[tokio::test]
async fn a_sync_run_shows_on_metrics_with_the_right_values() {
    let env = TestEnv::new().await;
    let registry = Metrics::new();
    let metrics = SyncMetrics::register(&registry);
    let server = OpsServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        registry,
        Readiness::new()
            .database(env.store.clone())
            .nats(env.broker.clone()),
    )
    .await
    .expect("bind");
    let base = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));

    // Seven valid events and two that are not, published before any consumer runs.
    let events = vec![
        message(1, "discord:1"),
        message(2, "discord:1"),
        message(3, "discord:1"),
        ev(
            "telegram:voice:1",
            "telegram:7",
            Payload::Voice {
                seconds: 60,
                channel: None,
                mult: None,
            },
        ),
        ev(
            "admin:xp:1",
            "discord:2",
            Payload::Xp {
                amount: 600,
                reason: "prize".into(),
                by: None,
            },
        ),
        ev(
            "telegram:game:1",
            "telegram:7",
            Payload::Game {
                game: "chess".into(),
                won: true,
                xp: 5,
            },
        ),
        ev(
            "discord:link:1",
            "discord:1",
            Payload::Link {
                other: Identity::parse("telegram:7").expect("identity"),
                proof: Proof::Code,
                by: None,
            },
        ),
    ];
    env.publish(&events).await;
    let subject = env.broker.subjects.event("discord", "message");
    for n in 0..2 {
        env.broker
            .publish_raw(
                subject.clone(),
                &format!("garbage:{n}"),
                Bytes::from_static(b"not msgpack"),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    // The backlog gauge sees the nine waiting messages.
    let consumer = env.broker.sync_consumer().await.expect("consumer");
    tokio::spawn(ttfd::observe::sync::watch_backlog(
        consumer.clone(),
        env.store.clone(),
        metrics.clone(),
        Duration::from_millis(100),
        stop.clone(),
    ));
    metrics_show(&base, &[("ttfd_sync_consumer_pending", 9.0)]).await;

    // A consumer applies them; the relay is not running yet, so the rank change and the
    // merge wait in the outbox. (The new database's standings are built first, so that
    // the refresher's round applies the batch's work rather than a recompute.)
    env.store.drain_standings().await.expect("standings");
    let broker = Broker::connect(&env.settings.nats, Duration::from_secs(5))
        .await
        .expect("connect");
    let worker = SyncWorker::new(
        env.store.clone(),
        broker,
        consumer,
        env.settings.sync.clone(),
    )
    .with_metrics(metrics.clone());
    tokio::spawn(worker.run(stop.clone()));
    let text = metrics_show(
        &base,
        &[
            (
                r#"ttfd_sync_events_total{platform="discord",kind="message",outcome="applied"}"#,
                3.0,
            ),
            (
                r#"ttfd_sync_events_total{platform="telegram",kind="voice",outcome="applied"}"#,
                1.0,
            ),
            (
                r#"ttfd_sync_events_total{platform="telegram",kind="game",outcome="applied"}"#,
                1.0,
            ),
            (
                r#"ttfd_sync_events_total{platform="discord",kind="xp",outcome="applied"}"#,
                1.0,
            ),
            (
                r#"ttfd_sync_events_total{platform="discord",kind="link",outcome="applied"}"#,
                1.0,
            ),
            (
                r#"ttfd_sync_events_total{platform="discord",kind="message",outcome="dead_lettered"}"#,
                2.0,
            ),
            ("ttfd_sync_rank_changes_total", 1.0),
            ("ttfd_sync_merges_total", 1.0),
            ("ttfd_sync_batch_events_sum", 9.0),
            ("ttfd_sync_consumer_pending", 0.0),
            ("ttfd_sync_consumer_ack_pending", 0.0),
            ("ttfd_sync_outbox_backlog", 2.0),
        ],
    )
    .await;
    assert!(
        sample(&text, "ttfd_sync_apply_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "ttfd_sync_retries_total"), Some(0.0));
    // The refresher beside the consumer brings the batch to the leaderboards, and says
    // how long that took.
    let url = format!("{base}/metrics");
    eventually("a standings round on /metrics", || {
        let url = url.clone();
        async move {
            let (_, text) = get(&url).await;
            sample(&text, "ttfd_sync_standings_lag_seconds_count")
                .filter(|n| *n >= 1.0)
                .zip(sample(&text, "ttfd_sync_standings_lag_seconds_sum"))
                .filter(|(_, sum)| *sum > 0.0)
        }
    })
    .await;

    // The relay empties the outbox.
    env.spawn_relay(stop.clone());
    metrics_show(&base, &[("ttfd_sync_outbox_backlog", 0.0)]).await;

    // The same events again, under other message ids (so JetStream stores them): the
    // consumer counts them as duplicates and applies nothing.
    for e in &events {
        env.broker
            .publish_raw(
                env.broker
                    .subjects
                    .event(e.identity.platform.as_str(), e.kind()),
                &format!("again:{}", e.id.as_str()),
                Bytes::from(ttfd::shared::wire::encode(e)),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    metrics_show(
        &base,
        &[
            (
                r#"ttfd_sync_events_total{platform="discord",kind="message",outcome="duplicate"}"#,
                3.0,
            ),
            (
                r#"ttfd_sync_events_total{platform="telegram",kind="voice",outcome="duplicate"}"#,
                1.0,
            ),
            (
                r#"ttfd_sync_events_total{platform="discord",kind="message",outcome="applied"}"#,
                3.0,
            ),
            ("ttfd_sync_batch_events_sum", 16.0),
            ("ttfd_sync_rank_changes_total", 1.0),
        ],
    )
    .await;

    stop.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn readyz_fails_while_the_database_is_unreachable() {
    let env = TestEnv::new().await;
    let proxy = Outage::start(&env.db.options).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(env.db.options.clone().port(proxy.port));
    let store = ttfd::store::Store::from_pool(pool, env.settings.rules.clone());
    let server = OpsServer::bind(
        "127.0.0.1:0".parse().expect("addr"),
        Metrics::new(),
        Readiness::new().database(store).nats(env.broker.clone()),
    )
    .await
    .expect("bind");
    let base = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));

    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON"),
        serde_json::json!({"database": "ok", "nats": "ok"})
    );

    proxy.cut();
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_ne!(report["database"], "ok", "{report}");
    assert_eq!(report["nats"], "ok");
    // The process itself is alive: liveness does not depend on the database.
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);

    proxy.restore();
    eventually("/readyz to recover", || {
        let url = format!("{base}/readyz");
        async move { (get(&url).await.0 == 200).then_some(()) }
    })
    .await;

    stop.cancel();
    env.cleanup().await;
}

/// The address a role announced it serves metrics on (it was given port 0), read from
/// its JSON log on `lines`.
async fn metrics_address(lines: &mut Lines<BufReader<ChildStderr>>) -> String {
    announced(lines, "the metrics address", |line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &entry["fields"];
        let serving = fields["message"].as_str()?.starts_with("serving /metrics");
        serving.then(|| fields["addr"].as_str().map(str::to_owned))?
    })
    .await
}

#[tokio::test]
async fn the_sync_and_query_roles_serve_metrics_on_metrics_listen_and_log_json() {
    let env = TestEnv::new().await;
    let start = |role: &str| {
        env.ttfd(&[role])
            .env("TTFD__METRICS__LISTEN", "127.0.0.1:0")
            .env("TTFD__LOG__FORMAT", "json")
            .env("TTFD__LOG__FILTER", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("ttfd {role}: {e}"))
    };
    let (mut sync, mut query) = (start("sync"), start("query"));
    let mut sync_log = BufReader::new(sync.stderr.take().expect("piped")).lines();
    let mut query_log = BufReader::new(query.stderr.take().expect("piped")).lines();
    let sync_base = format!("http://{}", metrics_address(&mut sync_log).await);
    let query_base = format!("http://{}", metrics_address(&mut query_log).await);
    for base in [&sync_base, &query_base] {
        eventually(&format!("{base}/readyz"), || {
            let url = format!("{base}/readyz");
            async move { (get(&url).await.0 == 200).then_some(()) }
        })
        .await;
        assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    }

    env.publish(&[message(1, "discord:42")]).await;
    metrics_show(
        &sync_base,
        &[(
            r#"ttfd_sync_events_total{platform="discord",kind="message",outcome="applied"}"#,
            1.0,
        )],
    )
    .await;

    let client = QueryClient::new(
        env.broker.client.clone(),
        &env.settings.nats.prefix,
        Duration::from_secs(5),
    );
    let profile = client
        .profile(&Identity::parse("discord:42").expect("identity"))
        .await
        .expect("answer")
        .expect("a profile");
    assert_eq!(profile.xp, 10);
    metrics_show(
        &query_base,
        &[(
            r#"ttfd_query_requests_total{subject="profile",outcome="ok"}"#,
            1.0,
        )],
    )
    .await;
    let text = get(&format!("{query_base}/metrics")).await.1;
    assert!(
        sample(
            &text,
            r#"ttfd_query_request_duration_seconds_count{subject="profile"}"#
        ) == Some(1.0),
        "{text}"
    );

    // Every line the sync role logged is a JSON object.
    let _ = sync.start_kill();
    let _ = query.start_kill();
    let mut seen = 1; // the metrics address
    while let Ok(Some(line)) = sync_log.next_line().await {
        let parsed: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
        seen += 1;
    }
    assert!(seen >= 2, "the sync role logged at start-up");
    env.cleanup().await;
}

#[tokio::test]
async fn the_discord_publisher_counts_what_jetstream_stored() {
    let env = TestEnv::new().await;
    let registry = Metrics::new();
    let metrics = ttfd::observe::discord::DiscordMetrics::register(&registry);
    let (tx, rx) = tokio::sync::mpsc::channel(10);
    let done = CancellationToken::new();
    let publisher = tokio::spawn(ttfd::discord::publish_events_with(
        env.broker.clone(),
        rx,
        done.clone(),
        Duration::from_secs(5),
        metrics,
    ));
    for n in 1..=3 {
        tx.send(message(n, "discord:5")).await.expect("queued");
    }
    drop(tx);
    publisher.await.expect("publisher ends with its queue");
    let text = registry.render();
    assert_eq!(
        sample(
            &text,
            r#"ttfd_discord_events_published_total{kind="message"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ttfd_discord_publish_retries_total"),
        Some(0.0)
    );
    env.cleanup().await;
}
