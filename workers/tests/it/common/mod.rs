//! The test harness: every test gets its own database and its own NATS prefix (streams
//! and consumer), against the PostgreSQL and NATS named by `TTFD_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) and `TTFD_TEST_NATS_URL`
//! (default `nats://127.0.0.1:4222`). `scripts/test.sh` starts both when needed.

pub mod fake_discord;
pub mod fake_oauth;
pub mod fake_telegram;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;
use secrecy::SecretString;
use tokio::io::{AsyncBufRead, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use ttfd::broker::Broker;
use ttfd::broker::trust::Trust;
use ttfd::settings::Settings;
use ttfd::shared::model::{self, Profile as ModelProfile};
use ttfd::shared::trust::Publisher;
use ttfd::shared::view::{Period, Statement};
use ttfd::shared::{Event, Identity};
use ttfd::store::Store;
use ttfd::store::scratch::ScratchDb;
use ttfd::sync::{Counters, SyncWorker};

pub const TIMEOUT: Duration = Duration::from_secs(90);

/// One test's world: a scratch database, a private prefix with its streams, a store.
pub struct TestEnv {
    pub settings: Settings,
    pub db: ScratchDb,
    pub broker: Broker,
    pub store: Store,
    /// Whether `cleanup` removed the streams; if not (a failed test), `Drop` does.
    streams_removed: bool,
}

fn test_database_url() -> String {
    std::env::var("TTFD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn test_nats_url() -> String {
    std::env::var("TTFD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

impl TestEnv {
    /// A pool on a new schema `name` of this test's database, migrated up to (not
    /// including) migration `version`: data written as it was before that migration,
    /// to test the migration on it (`MIGRATOR.run` on the pool applies the rest).
    pub async fn schema_before(&self, name: &str, version: i64) -> sqlx::PgPool {
        use sqlx::ConnectOptions as _;
        use sqlx::migrate::Migrator;
        use ttfd::store::MIGRATOR;

        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&self.store.pool)
            .await
            .expect("schema");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(
                self.db
                    .options
                    .clone()
                    .options([("search_path", name)])
                    .disable_statement_logging(),
            )
            .await
            .expect("pool");
        let before = Migrator {
            migrations: std::borrow::Cow::Owned(
                MIGRATOR
                    .migrations
                    .iter()
                    .filter(|m| m.version < version)
                    .cloned()
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        before.run(&pool).await.expect("the migrations before");
        pool
    }

    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A world whose settings `tune` may adjust first (batch size, rules, ...).
    pub async fn with(tune: impl FnOnce(&mut Settings)) -> Self {
        ttfd::telemetry::init(&ttfd::settings::LogSettings {
            filter: std::env::var("TTFD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            ..Default::default()
        });
        let mut settings = Settings::default();
        settings.database.url = SecretString::from(test_database_url());
        settings.nats.url = test_nats_url();
        settings.nats.prefix = format!("t{:012x}", rand::rng().random::<u64>() >> 16);
        settings.sync.shutdown_grace_secs = 5;
        settings.sync.relay_poll_ms = 100;
        settings.sync.max_retry_delay_secs = 1;
        // A season over two of the four days the generated events span, across the
        // month boundary: every comparison with the model covers a season's standings.
        settings.seasons = vec![ttfd::settings::seasons::SeasonSettings {
            name: "t1".into(),
            from: "2026-02-28".into(),
            to: "2026-03-01".into(),
        }];
        tune(&mut settings);
        let db = ScratchDb::create(&settings.database, "ttfd_test")
            .await
            .expect("create a scratch database (is PostgreSQL running? scripts/services.sh)");
        settings.database.url = SecretString::from(db.url(&settings.database));
        let broker = Broker::connect(&settings.nats, Duration::from_secs(5))
            .await
            .expect("connect to NATS (is it running? scripts/services.sh)");
        broker.setup().await.expect("provision streams");
        // Standings blocks of 3 members: the tests' handfuls of users cut and fold them.
        let store = Store::from_pool(db.pool(8).await.expect("pool"), settings.rules.clone())
            .with_block_target(3);
        let seasons = ttfd::settings::seasons::seasons(&settings.seasons).expect("seasons");
        store
            .configure_seasons(&seasons)
            .await
            .expect("configure the seasons");
        Self {
            settings,
            db,
            broker,
            store,
            streams_removed: false,
        }
    }

    /// The outbox relay (notices, queued events) polling every 50 ms; stops with `stop`.
    pub fn spawn_relay(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(ttfd::sync::relay_outbox(
            self.store.clone(),
            self.broker.clone(),
            Default::default(),
            Duration::from_millis(50),
            stop,
        ))
    }

    /// An in-process sync replica with its own NATS connection; stops with `stop`.
    pub async fn spawn_worker(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        self.spawn_worker_on(self.store.clone(), stop).await
    }

    pub async fn spawn_worker_on(
        &self,
        store: Store,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_counted_worker_on(store, stop).await.0
    }

    /// A sync replica whose [`Counters`] (batches, retries, ...) the test can wait on.
    pub async fn spawn_counted_worker_on(
        &self,
        store: Store,
        stop: CancellationToken,
    ) -> (tokio::task::JoinHandle<()>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let broker = self.broker_as(Some(Publisher::Relay)).await;
        let consumer = broker.sync_consumer().await.expect("consumer");
        let worker = SyncWorker::new(store, broker, consumer, self.settings.sync.clone())
            .with_counters(counters.clone());
        let task = tokio::spawn(async move {
            worker.run(stop).await.expect("worker runs");
        });
        (task, counters)
    }

    /// A connection of its own, with this world's `trust.*`, signing as `publisher` when
    /// the world holds its key (as a role of that kind would).
    pub async fn broker_as(&self, publisher: Option<Publisher>) -> Broker {
        let trust = Trust::from_settings(&self.settings.trust, publisher).expect("trust.*");
        Broker::connect(&self.settings.nats, Duration::from_secs(5))
            .await
            .expect("connect")
            .with_trust(trust)
    }

    /// Shrinks the events stream's duplicate window and publishes `event` until
    /// JetStream stores it again (each try before the window passed is dropped as a
    /// duplicate, so exactly one more copy is stored).
    pub async fn publish_after_the_duplicate_window(&self, event: &Event) {
        self.shrink_the_duplicate_window(Duration::from_millis(100))
            .await;
        eventually("a copy stored after the duplicate window", || async {
            let ack = self.broker.publish_event(event).await.ok()?.await.ok()?;
            (!ack.duplicate).then_some(())
        })
        .await;
    }

    /// Makes the events stream's duplicate window `window` long.
    pub async fn shrink_the_duplicate_window(&self, window: Duration) {
        let mut stream = self
            .broker
            .js
            .get_stream(self.broker.subjects.events_stream())
            .await
            .expect("stream");
        let config = stream.info().await.expect("info").config.clone();
        self.broker
            .js
            .update_stream(async_nats::jetstream::stream::Config {
                duplicate_window: window,
                ..config
            })
            .await
            .expect("update");
    }

    /// The reasons (`Ttfd-Error`) of the first `n` messages on the dead-letter stream.
    pub async fn dead_letters(&self, n: usize) -> Vec<String> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull};
        use futures::StreamExt;
        let dlq = self
            .broker
            .js
            .get_stream(self.broker.subjects.dlq_stream())
            .await
            .expect("dlq stream");
        let reader = dlq
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("reader");
        let mut letters = reader
            .fetch()
            .max_messages(n)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .expect("fetch");
        let mut reasons = Vec::new();
        while let Some(Ok(m)) = letters.next().await {
            let reason = m.headers.as_ref().and_then(|h| h.get("Ttfd-Error"));
            reasons.push(reason.map(|v| v.to_string()).unwrap_or_default());
            m.ack().await.expect("ack");
        }
        reasons
    }

    /// The environment a `ttfd` child process needs to join this world.
    pub fn child_env(&self) -> Vec<(String, String)> {
        use secrecy::ExposeSecret;
        let trust = &self.settings.trust;
        let keys = trust.keys.iter().map(|(name, key)| {
            let var = format!("TTFD__TRUST__KEYS__{}", name.to_uppercase());
            (var, key.expose_secret().to_owned())
        });
        let mode = match trust.mode {
            ttfd::settings::TrustMode::Open => "open",
            ttfd::settings::TrustMode::Signed => "signed",
        };
        let mut env = vec![
            (
                "TTFD__DATABASE__URL".into(),
                self.settings.database.url.expose_secret().to_owned(),
            ),
            ("TTFD__NATS__URL".into(), self.settings.nats.url.clone()),
            (
                "TTFD__NATS__PREFIX".into(),
                self.settings.nats.prefix.clone(),
            ),
            (
                "TTFD__SYNC__BATCH_SIZE".into(),
                self.settings.sync.batch_size.to_string(),
            ),
            ("TTFD__SYNC__SHUTDOWN_GRACE_SECS".into(), "5".into()),
            ("TTFD__LOG__FILTER".into(), "warn".into()),
            ("TTFD__TRUST__MODE".into(), mode.into()),
        ];
        env.extend(keys);
        env
    }

    /// `ttfd <args>` as a child process of this world.
    pub fn ttfd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ttfd"));
        cmd.args(args).envs(self.child_env()).kill_on_drop(true);
        cmd
    }

    /// A `ttfd sync` replica as its own process.
    pub fn spawn_sync_process(&self) -> Child {
        self.ttfd(&["sync"]).spawn().expect("start ttfd sync")
    }

    /// Publishes events (each with `Nats-Msg-Id` = its id) and waits for JetStream acks.
    pub async fn publish(&self, events: &[Event]) {
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            acks.push(self.broker.publish_event(e).await.expect("publish"));
        }
        for a in acks {
            a.await.expect("stored");
        }
    }

    /// Waits until the database holds exactly the state the model derives from `events`.
    pub async fn wait_for_model(&self, events: &[Event]) {
        let expected = model::fold(&self.settings.rules, events);
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let Err(diff) = compare(&self.store, &expected).await else {
                return;
            };
            if tokio::time::Instant::now() > deadline {
                panic!("the database never matched the model: {diff}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes the streams and the database.
    pub async fn cleanup(mut self) {
        remove_streams(&self.broker).await;
        self.streams_removed = true;
        self.store.pool.close().await;
        let _ = self.db.remove().await;
    }
}

/// Every stream under the test's prefix (the three of `nats/` and any a role made).
async fn remove_streams(broker: &Broker) {
    use futures::TryStreamExt;
    let upper = format!("{}_", broker.subjects.prefix().to_uppercase());
    let names: Vec<String> = broker
        .js
        .stream_names()
        .try_collect()
        .await
        .unwrap_or_default();
    for s in names.into_iter().filter(|n| n.starts_with(&upper)) {
        let _ = broker.js.delete_stream(s).await;
    }
}

impl Drop for TestEnv {
    /// A failed test never reaches `cleanup`: remove its streams anyway (the scratch
    /// database removes itself), from a thread with its own runtime, as Drop cannot await.
    fn drop(&mut self) {
        if self.streams_removed {
            return;
        }
        let nats = self.settings.nats.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let connected = Broker::connect(&nats, Duration::from_secs(2)).await;
                if let Ok(broker) = connected {
                    let _ = tokio::time::timeout(Duration::from_secs(10), remove_streams(&broker))
                        .await;
                }
            });
        })
        .join();
    }
}

/// `Ok` when the store holds exactly the users of `expected`.
pub async fn compare(store: &Store, expected: &[ModelProfile]) -> Result<(), String> {
    let mut owners = std::collections::HashMap::new();
    let live = store.user_count().await.map_err(|e| e.to_string())?;
    if live != expected.len() as i64 {
        return Err(format!(
            "{live} users in the database, {} in the model",
            expected.len()
        ));
    }
    for want in expected {
        let first = want.identities.first().expect("a user has an identity");
        let got = store
            .profile(first)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no user for {first}"))?;
        let ids: BTreeSet<Identity> = got
            .identities
            .iter()
            .map(|i| Identity::new(&i.platform, &i.user).expect("stored identities are valid"))
            .collect();
        let as_ms = |s: &Option<String>| {
            s.as_ref().and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .ok()
                    .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            })
        };
        let got_tuple = (
            ids,
            got.xp,
            got.rank.index,
            got.peak_rank,
            got.coins,
            got.messages,
            got.voice_seconds,
            got.games_played,
            got.games_won,
            got.display_name.clone(),
            as_ms(&got.created_at),
            (as_ms(&got.last_active), got.hidden, got.notify),
        );
        let want_tuple = (
            want.identities.clone(),
            want.xp,
            want.rank,
            want.peak_rank,
            want.coins,
            want.messages,
            want.voice_seconds,
            want.games_played,
            want.games_won,
            want.display_name.clone(),
            want.first_ts,
            (want.last_ts, want.hidden, want.notify),
        );
        if got_tuple != want_tuple {
            return Err(format!(
                "user of {first}:\n got  {got_tuple:?}\n want {want_tuple:?}"
            ));
        }
        let days: Vec<(time::Date, i64)> = store
            .xp_by_day(
                got.uid,
                time::macros::date!(2000 - 01 - 01),
                time::macros::date!(2100 - 01 - 01),
            )
            .await
            .map_err(|e| e.to_string())?;
        let got_ledger: Vec<(i32, i64)> = days
            .into_iter()
            .map(|(d, x)| {
                (
                    (d - time::macros::date!(1970 - 01 - 01)).whole_days() as i32,
                    x,
                )
            })
            .collect();
        let want_ledger: Vec<(i32, i64)> = want.ledger.iter().map(|(d, x)| (*d, *x)).collect();
        if got_ledger != want_ledger {
            return Err(format!(
                "ledger of {first}: got {got_ledger:?}, want {want_ledger:?}"
            ));
        }
        // The XP statement: what each day's and each platform's XP is made of.
        let got_statement = store
            .statement(
                got.uid,
                Period::All,
                None,
                time::macros::date!(2026 - 01 - 01),
            )
            .await
            .map_err(|e| e.to_string())?
            .ok_or("all time always has a statement")?;
        let want_statement = Statement::of(
            Period::All,
            None,
            None,
            want.tallies.iter().map(|((platform, day), tally)| {
                (
                    platform.clone(),
                    ttfd::shared::rules::date_of_day(*day),
                    *tally,
                )
            }),
        );
        if got_statement != want_statement {
            return Err(format!(
                "statement of {first}:\n got  {got_statement:?}\n want {want_statement:?}"
            ));
        }
        owners.insert(got.uid, want.identities.clone());
    }
    compare_standings(store, expected, &owners).await
}

/// Finishes the erasures `store` queued as `privacy::erase_pending` does, with `events`
/// standing for what the events stream holds: the forget and the identity's later
/// events (and links naming it) are applied again in one transaction.
pub async fn finish_erasures(store: &Store, events: &[ttfd::shared::Event]) {
    let work: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT event_id, platform, external_id, cut_ms FROM erasure_work ORDER BY event_id",
    )
    .fetch_all(&store.pool)
    .await
    .expect("erasure work");
    for (id, platform, user, cut) in work {
        let identity = Identity::new(&platform, &user).expect("identity");
        let mut batch: Vec<ttfd::shared::Event> = events
            .iter()
            .filter(|e| e.ts > cut)
            .filter(|e| e.identity == identity || e.payload.other() == Some(&identity))
            .cloned()
            .collect();
        batch.push(
            events
                .iter()
                .find(|e| e.id.as_str() == id)
                .cloned()
                .expect("the forget"),
        );
        store
            .apply_again(&batch, &id, &identity)
            .await
            .expect("apply again");
    }
}

/// `Ok` when every leaderboard the model's events make (all time, every week and month
/// with XP) is the store's: the same members with the same XP in the same order, ties
/// by the smaller uid; read whole, page by page and as each member's positions.
async fn compare_standings(
    store: &Store,
    expected: &[ModelProfile],
    owners: &std::collections::HashMap<i64, BTreeSet<Identity>>,
) -> Result<(), String> {
    let seasons = store.seasons().await.map_err(|e| e.to_string())?;
    let mut keys: BTreeSet<String> = BTreeSet::from(["all".to_owned()]);
    for p in expected {
        for day in p.ledger.keys() {
            keys.extend(model::period_keys(*day, &seasons));
        }
    }
    let err = |e: ttfd::store::StoreError| e.to_string();
    for key in &keys {
        let want: Vec<(BTreeSet<Identity>, i64)> = model::standings(expected, key, &seasons)
            .into_iter()
            .map(|(p, xp)| (p.identities.clone(), xp))
            .collect();
        let rows = store.standings_page(key, 10_000, 0).await.map_err(err)?;
        let got: Vec<(i64, BTreeSet<Identity>, i64)> = rows
            .iter()
            .map(|(uid, xp)| (*uid, owners.get(uid).cloned().unwrap_or_default(), *xp))
            .collect();
        // The model breaks no ties: compare the XP in order and the members per XP.
        let tie_groups = |rows: &mut dyn Iterator<Item = (BTreeSet<Identity>, i64)>| {
            let mut groups: Vec<(i64, BTreeSet<BTreeSet<Identity>>)> = Vec::new();
            for (ids, xp) in rows {
                match groups.last_mut() {
                    Some((x, g)) if *x == xp => {
                        g.insert(ids);
                    }
                    _ => groups.push((xp, BTreeSet::from([ids]))),
                }
            }
            groups
        };
        let got_groups = tie_groups(&mut got.iter().map(|(_, ids, xp)| (ids.clone(), *xp)));
        let want_groups = tie_groups(&mut want.iter().cloned());
        if got_groups != want_groups {
            return Err(format!(
                "standings {key}:\n got  {got_groups:?}\n want {want_groups:?}"
            ));
        }
        if let Some(w) = got.windows(2).find(|w| w[0].2 == w[1].2 && w[0].0 > w[1].0) {
            return Err(format!("standings {key}: a tie not by uid: {w:?}"));
        }
        let ranked = store.ranked(key).await.map_err(err)?;
        if ranked != got.len() as i64 {
            return Err(format!(
                "standings {key}: blocks count {ranked}, {} rows",
                got.len()
            ));
        }
        // Pages of 2 start where the whole list says, block boundaries or not.
        for offset in (0..got.len()).step_by(2) {
            let page = store
                .standings_page(key, 2, offset as i64)
                .await
                .map_err(err)?;
            if page[..] != rows[offset..(offset + 2).min(rows.len())] {
                return Err(format!("standings {key}: page at {offset} is {page:?}"));
            }
        }
    }
    // Each member's positions in the current periods; a hidden member's is where they
    // would be among those shown.
    let today = time::OffsetDateTime::now_utc().date();
    for (uid, ids) in owners {
        let hidden = expected.iter().any(|p| &p.identities == ids && p.hidden);
        for s in store.standings_of(*uid, today).await.map_err(err)? {
            let rows = store.standings_page(&s.key, 10_000, 0).await.map_err(err)?;
            let ranked = s.key == "all" || s.xp != 0;
            let at = match rows.iter().position(|(u, _)| u == uid) {
                Some(_) if hidden => {
                    return Err(format!("hidden user {uid} is shown in {}", s.key));
                }
                Some(i) => Some(i as u64 + 1),
                None if hidden && ranked => {
                    let before = rows
                        .iter()
                        .filter(|(u, x)| (-x, *u) < (-s.xp, *uid))
                        .count();
                    Some(before as u64 + 1)
                }
                None => None,
            };
            if s.position != at || s.ranked != rows.len() as u64 {
                return Err(format!(
                    "position of user {uid} in {}: {:?} of {}, the list says {at:?} of {}",
                    s.key,
                    s.position,
                    s.ranked,
                    rows.len()
                ));
            }
        }
    }
    Ok(())
}

/// Reads `lines` (a child's output) until `find` picks a value out of one, as the port a
/// child announces after binding port 0; panics after [`TIMEOUT`] or at the end, naming
/// `what`.
pub async fn announced<R, T>(
    lines: &mut Lines<R>,
    what: &str,
    find: impl Fn(&str) -> Option<T>,
) -> T
where
    R: AsyncBufRead + Unpin,
{
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read the child's output") {
            if let Some(found) = find(&line) {
                return found;
            }
        }
        panic!("the child ended without announcing {what}");
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `check` until it returns `Some`, or panics after [`TIMEOUT`] naming `what`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Synthetic community events at times spread over the last three days.
pub fn community(n: usize, people: u64, seed: u64) -> Vec<Event> {
    use rand::SeedableRng;
    let mut traffic = ttfd::traffic::Traffic::new(people, seed, &format!("c{seed}"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let now = ttfd::now_ms();
    (0..n)
        .map(|_| traffic.next(now - rng.random_range(0..3 * 86_400_000)))
        .collect()
}

/// A TCP proxy in front of PostgreSQL that can cut every connection and refuse new
/// ones, to play a database outage without stopping the shared server.
pub struct Outage {
    pub port: u16,
    up: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    conns: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
}

impl Outage {
    /// A proxy to the server of `database` (the test database's host and port).
    pub async fn start(database: &sqlx::postgres::PgConnectOptions) -> Self {
        let target = format!("{}:{}", database.get_host(), database.get_port());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicUsize::new(0));
        let conns: Arc<std::sync::Mutex<Vec<AbortHandle>>> = Arc::default();
        let (u, r, c) = (up.clone(), refused.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    continue; // dropped: connection refused in effect
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().expect("lock").push(task.abort_handle());
            }
        });
        Self {
            port,
            up,
            refused,
            conns,
        }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    /// How many connections were refused since the cut: the client has tried that often.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Every event of `platform` the events stream holds now, in stream order, decoded.
pub async fn stored_events(env: &TestEnv, platform: &str) -> Vec<Event> {
    use futures::StreamExt;
    let stream = env
        .broker
        .js
        .get_stream(env.broker.subjects.events_stream())
        .await
        .expect("events stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: env.broker.subjects.event(platform, ">"),
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut messages = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("fetch");
    let mut events = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.expect("a message");
        let kind = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
        events.push(
            ttfd::shared::wire::decode(&m.payload, (platform, &kind), ttfd::now_ms())
                .expect("a valid event"),
        );
    }
    events
}
