//! `ttfd bench`: throughput and latency of the sync pipeline, side by side with a raw
//! baseline measured in the same run on the same machine; `ttfd bench reads`
//! ([`reads`]): leaderboards and positions at community scale.
//!
//! In a scratch database and under a scratch NATS prefix (both removed at the end) it
//! publishes `--events` events of the synthetic community mix over about
//! `--identities` identities, then measures: (a) a consumer that only pulls and acks,
//! with no database; (b) the full pipeline with each of `--replicas` sync replicas, each
//! replica with its own NATS connection and database pool as separate processes have;
//! (c) latency from storage in the stream to commit and ack at a steady
//! `--latency-rate` with 2 replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::now_ms;
use crate::settings::{NatsSettings, Settings};
use crate::store::Store;
use crate::store::scratch::ScratchDb;
use crate::sync::{Counters, SyncWorker};
use crate::traffic::Traffic;

pub mod reads;

#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Events to publish and consume.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// About how many identities the events come from.
    #[arg(long, default_value_t = 10_000)]
    pub identities: u64,
    /// Replica counts to measure the pipeline with.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4])]
    pub replicas: Vec<usize>,
    /// Event times cover this many hours before now.
    #[arg(long, default_value_t = 24)]
    pub span_hours: u64,
    /// Event times in random order over the span, instead of rising with publication
    /// order as a backlog of live traffic has them: the worst case for the peak rank.
    #[arg(long)]
    pub shuffled: bool,
    /// Steady publish rate for the latency measurement, events/s.
    #[arg(long, default_value_t = 2000)]
    pub latency_rate: u64,
    /// Duration of the latency measurement, seconds.
    #[arg(long, default_value_t = 10)]
    pub latency_seconds: u64,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Leaderboard pages and members' positions at community scale, from the standings
    /// and by aggregation (the baseline).
    Reads(reads::ReadsArgs),
}

pub async fn run(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchCommand::Reads(r)) = args.command {
        return reads::run(settings, r).await;
    }
    let db = ScratchDb::create(&settings.database, "ttfd_bench")
        .await
        .context("cannot create the benchmark database (database.url)")?;
    let nats = NatsSettings {
        prefix: format!("bench{:08x}", rand::rng().random::<u32>()),
        ..settings.nats.clone()
    };
    let broker = Broker::connect(&nats, Duration::from_secs(5)).await?;
    broker.setup().await?;
    let result = measure(settings, &nats, &broker, &db, &args).await;
    for stream in [
        broker.subjects.events_stream(),
        broker.subjects.notify_stream(),
        broker.subjects.dlq_stream(),
    ] {
        let _ = broker.js.delete_stream(stream).await;
    }
    let pool = db.pool(1).await?;
    pool.close().await;
    db.remove().await?;
    result
}

async fn measure(
    settings: &Settings,
    nats: &NatsSettings,
    broker: &Broker,
    db: &ScratchDb,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let n = args.events;
    println!(
        "TTFD bench: {n} events over ~{} identities, event times {} over {} h, {} cores",
        args.identities,
        if args.shuffled {
            "shuffled"
        } else {
            "in order"
        },
        args.span_hours,
        std::thread::available_parallelism().map_or(1, |p| p.get())
    );

    // Publish the whole set, over the span.
    let started = Instant::now();
    let mut traffic = Traffic::new(args.identities / 2, 7, "bench");
    let mut rng = rand::rng();
    let now = now_ms();
    let mut acks = std::collections::VecDeque::new();
    let span = i64::try_from(args.span_hours * 3_600_000)
        .unwrap_or(i64::MAX)
        .max(1);
    for i in 0..n {
        let ts = if args.shuffled {
            now - rng.random_range(0..span)
        } else {
            now - span + (i128::from(span) * i128::from(i) / i128::from(n)) as i64
        };
        acks.push_back(broker.publish_event(&traffic.next(ts)).await?);
        if acks.len() >= 4096
            && let Some(a) = acks.pop_front()
        {
            a.await?;
        }
    }
    for a in acks {
        a.await?;
    }
    let publish_rate = rate(n, started.elapsed());
    println!(
        "{:<40} {:>10.0} events/s",
        "publish (JetStream, acked)", publish_rate
    );

    // (a) Baseline: pull and ack, nothing else.
    let consumer = consumer_named(broker, "baseline", DeliverPolicy::All).await?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.sync.batch_size)
        .messages()
        .await?
        .ready_chunks(settings.sync.batch_size);
    let mut seen = 0u64;
    while seen < n {
        let Some(chunk) = messages.next().await else {
            break;
        };
        for m in chunk.into_iter().flatten() {
            m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            seen += 1;
        }
    }
    let baseline = rate(seen, started.elapsed());
    println!(
        "{:<40} {:>10.0} events/s",
        "(a) baseline: consume + ack, no database", baseline
    );

    // (b) The full pipeline.
    let pool = db.pool(2).await?;
    let mut figures = Vec::new();
    for &replicas in &args.replicas {
        db.truncate(&pool).await?;
        let name = format!("sync-r{replicas}");
        consumer_named(broker, &name, DeliverPolicy::All).await?;
        let (elapsed, retries) = run_replicas(
            settings,
            nats,
            db,
            &name,
            replicas,
            None,
            async |c: &Counters| {
                wait_for(c, n).await;
            },
        )
        .await?;
        let r = rate(n, elapsed);
        figures.push((replicas, r));
        println!(
            "{:<40} {:>10.0} events/s   ratio to baseline {:.2}   ({retries} retried batches)",
            format!("(b) pipeline, {replicas} replica(s)"),
            r,
            r / baseline
        );
    }

    // (c) Latency at a steady rate, 2 replicas.
    db.truncate(&pool).await?;
    consumer_named(broker, "sync-latency", DeliverPolicy::New).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let total = args.latency_rate * args.latency_seconds;
    let rate_per_tick = (args.latency_rate / 100).max(1);
    let publisher = broker.clone();
    run_replicas(
        settings,
        nats,
        db,
        "sync-latency",
        2,
        Some(tx),
        async move |c: &Counters| {
            let mut traffic = Traffic::new(5_000, 11, "latency");
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut sent = 0;
            while sent < total {
                tick.tick().await;
                for _ in 0..rate_per_tick {
                    if let Ok(ack) = publisher.publish_event(&traffic.next(now_ms())).await {
                        drop(ack);
                    }
                    sent += 1;
                }
            }
            wait_for(c, total).await;
        },
    )
    .await?;
    let mut latencies = Vec::new();
    while let Ok(d) = rx.try_recv() {
        latencies.push(d);
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{:<40} p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   ({} events)",
        format!("(c) latency at {} events/s, 2 replicas", args.latency_rate),
        pct(0.50),
        pct(0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        latencies.len()
    );
    println!(
        "{:<40} {:>10.0} events/s",
        "old design (100 events per 5 s poll)", 20.0
    );
    if let Some((_, best)) = figures.iter().find(|(r, _)| *r == 2) {
        println!(
            "targets: 2 replicas >= 50000 events/s: {best:.0}; ratio >= 0.25: {:.2}; p99 < 50 ms: {:.1}",
            best / baseline,
            pct(0.99)
        );
    }
    Ok(())
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

async fn consumer_named(
    broker: &Broker,
    name: &str,
    deliver: DeliverPolicy,
) -> anyhow::Result<async_nats::jetstream::consumer::PullConsumer> {
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        deliver_policy: deliver,
        ..broker.sync_consumer_config()?
    };
    let stream = broker
        .js
        .get_stream(broker.subjects.events_stream())
        .await?;
    Ok(stream.create_consumer(config).await?)
}

async fn wait_for(c: &Counters, n: u64) {
    while Counters::get(&c.applied) + Counters::get(&c.duplicates) + Counters::get(&c.dead_lettered)
        < n
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `replicas` sync workers on consumer `name` while `drive` runs; returns how long
/// `drive` took.
async fn run_replicas(
    settings: &Settings,
    nats: &NatsSettings,
    db: &ScratchDb,
    name: &str,
    replicas: usize,
    latency: Option<mpsc::UnboundedSender<Duration>>,
    drive: impl AsyncFnOnce(&Counters),
) -> anyhow::Result<(Duration, u64)> {
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    for _ in 0..replicas {
        let broker = Broker::connect(nats, Duration::from_secs(5)).await?;
        let consumer = broker
            .js
            .get_consumer_from_stream(name, broker.subjects.events_stream())
            .await?;
        let store = Store::from_pool(db.pool(4).await?, settings.rules.clone());
        let mut worker = SyncWorker::new(store, broker, consumer, settings.sync.clone())
            .with_counters(counters.clone());
        if let Some(tx) = &latency {
            worker = worker.with_latency(tx.clone());
        }
        let s = stop.clone();
        tasks.spawn(async move { worker.run(s).await });
    }
    let started = Instant::now();
    drive(&counters).await;
    let elapsed = started.elapsed();
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok((elapsed, Counters::get(&counters.retries)))
}
