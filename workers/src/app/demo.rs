//! `ttfd demo`: the whole pipeline on one machine with synthetic activity, so a
//! newcomer sees events become profiles, ranks change and leaderboards move.
//!
//! It migrates the database, provisions NATS, runs `--replicas` sync consumers and the
//! outbox relay in-process, publishes activity of `--people` persons on Discord,
//! Telegram and the website (links and merges included), prints the leaderboard, and
//! serves the website (`web.listen`) so the leaderboard can be watched in a browser.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;
use ttfd_shared::wire::RankNotice;

use super::{Role, connect_broker, connect_store};
use crate::broker::Broker;
use crate::now_ms;
use crate::settings::Settings;
use crate::sync::{Counters, SyncWorker, relay_outbox};
use crate::traffic::Traffic;
use ttfd_shared::view::Period;
use ttfd_shared::view::text::{self, Markup};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Persons in the synthetic community.
    #[arg(long, default_value_t = 300)]
    pub people: u64,
    /// Synthetic events per second; 0: none (the bots bring real activity).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
    /// Sync consumer replicas to run.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
}

pub async fn run(
    settings: &Settings,
    args: DemoArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = connect_store(settings).await?;
    store.migrate().await?;
    let broker = connect_broker(settings, Role::Sync.signs_as()).await?;
    broker.setup().await?;
    println!(
        "TTFD demo: {} people, {} events/s, {} sync replicas, prefix {:?}. Ctrl-C stops.",
        args.people,
        args.rate,
        args.replicas,
        broker.subjects.prefix()
    );
    println!("Meanwhile, try: ttfd top --period week   |   ttfd user discord:300000000000000000");

    let counters = Arc::new(Counters::default());
    let wake = Arc::new(Notify::new());
    let tasks = TaskTracker::new();
    let workers = CancellationToken::new();
    for _ in 0..args.replicas.max(1) {
        let b = connect_broker(settings, Role::Sync.signs_as()).await?;
        let worker = SyncWorker::new(
            store.clone(),
            b.clone(),
            b.sync_consumer().await?,
            settings.sync.clone(),
        )
        .with_counters(counters.clone())
        .with_relay_wake(wake.clone());
        let stop = workers.clone();
        tasks.spawn(async move {
            if let Err(e) = worker.run(stop).await {
                warn!(error = %e, "sync worker stopped");
            }
        });
    }
    tasks.spawn(relay_outbox(
        store.clone(),
        broker.clone(),
        wake,
        Duration::from_millis(200),
        workers.clone(),
    ));
    tasks.spawn(announce_rank_ups(broker.clone(), workers.clone()));
    // The bots' query service, so `ttfd discord` / `ttfd telegram` can join the demo.
    let (query_store, query_broker, stop) = (store.clone(), broker.clone(), workers.clone());
    tasks.spawn(async move {
        if let Err(e) = crate::query::serve(query_store, query_broker, stop).await {
            warn!(error = %e, "query service stopped");
        }
    });
    // The website (`web.listen`, default 127.0.0.1:8080), to watch it in a browser.
    let web = crate::web::WebApp::build(
        settings,
        store.clone(),
        broker.clone(),
        crate::metrics::Metrics::new(),
        Role::Web.grace(settings),
    );
    match web.await {
        Ok(web) => {
            println!("Leaderboard in a browser: {}/leaderboard", web.base_url());
            let stop = workers.clone();
            tasks.spawn(async move {
                if let Err(e) = web.run(stop).await {
                    warn!(error = %e, "website stopped");
                }
            });
        }
        Err(e) => println!("The website did not start ({e}); the demo runs without it."),
    }

    // The traffic plays the platforms' publishers: unsigned.
    let platforms = connect_broker(settings, None).await?;
    let publisher = publish_traffic(&platforms, &args, &shutdown);
    let mut report = tokio::time::interval(Duration::from_secs(5));
    report.tick().await;
    tokio::pin!(publisher);
    loop {
        tokio::select! {
            result = &mut publisher => { result?; break; }
            _ = report.tick() => {
                let today = time::OffsetDateTime::now_utc().date();
                let top = store.top(&week_key(today), 5, 0).await?;
                println!(
                    "\napplied {}  duplicates {}  rank changes {}  merges {}  dead-lettered {}",
                    Counters::get(&counters.applied), Counters::get(&counters.duplicates),
                    Counters::get(&counters.rank_changes), Counters::get(&counters.merges),
                    Counters::get(&counters.dead_lettered),
                );
                println!("{}", text::top(Period::Week.words(), &top, Markup::Plain));
            }
        }
    }
    // Let the consumers catch up, then stop them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    workers.cancel();
    tasks.close();
    tasks.wait().await;
    let top = store.top("all", 10, 0).await?;
    println!("\n{}", text::top(Period::All.words(), &top, Markup::Plain));
    Ok(())
}

async fn publish_traffic(
    broker: &Broker,
    args: &DemoArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let run = format!("demo{}", now_ms());
    let mut traffic = Traffic::new(args.people, now_ms() as u64, &run);
    let per_tick = (args.rate / 10).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let deadline =
        (args.seconds > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(args.seconds));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ok(());
        }
        if args.rate == 0 {
            continue;
        }
        let mut acks = Vec::with_capacity(per_tick as usize);
        for _ in 0..per_tick {
            acks.push(broker.publish_event(&traffic.next(now_ms())).await?);
        }
        for ack in acks {
            ack.await?;
        }
    }
}

/// Prints rank changes as the platforms' bots would announce them.
async fn announce_rank_ups(broker: Broker, stop: CancellationToken) {
    let Ok(mut sub) = broker
        .client
        .subscribe(broker.subjects.notify("rank"))
        .await
    else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { return };
        if let Ok(n) = rmp_serde::from_slice::<RankNotice>(&msg.payload)
            && n.new_rank > n.old_rank
        {
            {
                let who: Vec<String> = n
                    .identities
                    .iter()
                    .map(|i| format!("{}:{}", i.platform, i.user))
                    .collect();
                println!(
                    "rank up: uid {} → rank {} ({} XP) [{}]",
                    n.uid,
                    n.new_rank,
                    n.xp,
                    who.join(", ")
                );
            }
        }
    }
}

/// This week's standings key.
fn week_key(today: time::Date) -> String {
    Period::Week
        .key(today, &Default::default())
        .unwrap_or_default()
}
