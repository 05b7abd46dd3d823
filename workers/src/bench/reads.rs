//! `ttfd bench reads`: leaderboard pages and members' positions at community scale,
//! from the standings, side by side with the aggregation over the ledger that served
//! them before (the baseline), in the same run on the same database.
//!
//! A scratch database gets `--users` users (one Discord identity each) with about
//! `--active-days` active days each in the last 30 days, XP per day heavy-tailed as a
//! community's is (many members with a message or two, a few with thousands), written
//! through the project's schema; the standings are then built by the path a migration
//! takes (`Store::recompute_standings`). The database is removed at the end.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::Rng;
use time::{Date, OffsetDateTime};
use ttfd_shared::rules::day_of_date;
use ttfd_shared::seasons::Seasons;
use ttfd_shared::view::Period;

use crate::settings::Settings;
use crate::store::Store;
use crate::store::scratch::ScratchDb;

#[derive(Debug, Clone, clap::Args)]
pub struct ReadsArgs {
    /// Users in the scratch database.
    #[arg(long, default_value_t = 1_000_000)]
    pub users: i64,
    /// Active days per user, at random in the last 30 days.
    #[arg(long, default_value_t = 8)]
    pub active_days: i32,
    /// Reads measured per figure from the standings.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Reads measured per figure of the baseline (each takes up to seconds at 1M users).
    #[arg(long, default_value_t = 5)]
    pub baseline_samples: usize,
    /// The page measured besides the first (25 rows a page).
    #[arg(long, default_value_t = 2000)]
    pub far_page: i64,
    /// Leave the scratch database behind for a look at it (its name is printed).
    #[arg(long)]
    pub keep: bool,
}

const PAGE: i64 = 25;

pub async fn run(settings: &Settings, args: ReadsArgs) -> anyhow::Result<()> {
    let db = ScratchDb::create(&settings.database, "ttfd_bench_reads")
        .await
        .context("cannot create the benchmark database (database.url)")?;
    let pool = db.pool(4).await?;
    let store = Store::from_pool(pool.clone(), settings.rules.clone());
    let result = measure(&store, &args).await;
    pool.close().await;
    if args.keep {
        println!("kept the database {}", db.keep());
    } else {
        db.remove().await?;
    }
    result
}

async fn measure(store: &Store, args: &ReadsArgs) -> anyhow::Result<()> {
    let today = OffsetDateTime::now_utc().date();
    println!(
        "TTFD bench reads: {} users, ~{} active days each in the last 30 days, {} cores",
        args.users,
        args.active_days,
        std::thread::available_parallelism().map_or(1, |p| p.get())
    );
    let started = Instant::now();
    fill(store, args, today).await?;
    println!(
        "{:<44} {:>8.1} s",
        "filled (users, identities, ledger)",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    store.recompute_standings().await?;
    // As autovacuum leaves a table soon after a bulk write: visibility map set, so
    // counts inside a block are index-only scans.
    sqlx::query("VACUUM ANALYZE standings, standing_blocks")
        .execute(&store.pool)
        .await?;
    // The bulk writes' dirty pages flushed now rather than by a checkpoint in the middle
    // of the reads (needs the right to; without it the reads meet it as they come).
    if let Err(e) = sqlx::query("CHECKPOINT").execute(&store.pool).await {
        println!("(no CHECKPOINT before the reads: {e})");
    }
    println!(
        "{:<44} {:>8.1} s",
        "standings built from the ledger",
        started.elapsed().as_secs_f64()
    );
    let none = Seasons::default();
    let key = |p: Period| p.key(today, &none).unwrap_or_default();
    for p in Period::ALL {
        println!(
            "  {:<42} {:>8} ranked",
            key(p),
            store.ranked(&key(p)).await?
        );
    }
    println!(
        "\n{:<34} {:>22} {:>26}",
        "read (p50 / p99, ms)", "standings", "baseline: aggregation"
    );
    let mut worst_page = 0.0f64;
    for period in Period::ALL {
        for page in [1, args.far_page] {
            let offset = (page - 1) * PAGE;
            let new = sample(args.samples, WARM_UP, async || {
                store.top(&key(period), PAGE, offset).await.map(|_| ())
            })
            .await?;
            let old = sample(args.baseline_samples, 1, async || {
                aggregate_top(store, period, today, offset).await
            })
            .await?;
            worst_page = worst_page.max(new.1);
            println!(
                "{:<34} {:>10.2} / {:>8.2} {:>14.1} / {:>8.1}",
                format!("page {page} of {period}"),
                new.0,
                new.1,
                old.0,
                old.1
            );
        }
    }
    let mut rng = rand::rng();
    // Distinct members for the warm-up and the measured reads of both sides.
    let uids: Vec<i64> = (0..args.samples + args.baseline_samples + WARM_UP + 1)
        .map(|_| rng.random_range(1..=args.users.max(1)))
        .collect();
    let mut next = {
        let mut i = 0;
        move || {
            i = (i + 1) % uids.len().max(1);
            uids.get(i).copied().unwrap_or(1)
        }
    };
    // Each read timed with its member, so that the slowest can be read again: fast
    // again means a slow moment of the machine, slow again a slow member.
    for _ in 0..WARM_UP {
        store.standings_of(next(), today).await?;
    }
    let mut timed: Vec<(Duration, i64)> = Vec::with_capacity(args.samples);
    for _ in 0..args.samples.max(1) {
        let uid = next();
        let t = Instant::now();
        store.standings_of(uid, today).await?;
        timed.push((t.elapsed(), uid));
    }
    let new = super::percentiles(timed.iter().map(|t| t.0).collect());
    let old = sample(args.baseline_samples, 1, async || {
        aggregate_positions(store, next(), today).await
    })
    .await?;
    println!(
        "{:<34} {:>10.2} / {:>8.2} {:>14.1} / {:>8.1}",
        "a member's positions, all periods", new.0, new.1, old.0, old.1
    );
    timed.sort_by_key(|t| std::cmp::Reverse(t.0));
    let mut again = Vec::new();
    for (was, uid) in timed.iter().take(5) {
        let t = Instant::now();
        store.standings_of(*uid, today).await?;
        again.push(format!(
            "uid {uid}: {:.1} -> {:.1}",
            was.as_secs_f64() * 1000.0,
            t.elapsed().as_secs_f64() * 1000.0
        ));
    }
    println!("  the 5 slowest, read again (ms): {}", again.join(", "));
    println!(
        "\ntargets: page p99 <= 20 ms: {worst_page:.2} ms ({}); positions p99 <= 10 ms: {:.2} ms ({})",
        verdict(worst_page <= 20.0),
        new.1,
        verdict(new.1 <= 10.0)
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Unmeasured reads before each measurement of the standings (one before the
/// baseline's, which take seconds each): a serving process reads from warm caches, and
/// the first touches of a freshly built million-row table measure the disk instead.
const WARM_UP: usize = 50;

/// p50 and p99 of `n` runs of `read`, in ms, after `warm` unmeasured ones.
async fn sample(
    n: usize,
    warm: usize,
    mut read: impl AsyncFnMut() -> Result<(), crate::store::StoreError>,
) -> anyhow::Result<(f64, f64)> {
    for _ in 0..warm {
        read().await?;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let t = Instant::now();
        read().await?;
        times.push(t.elapsed());
    }
    Ok(super::percentiles(times))
}

/// The users, their identities and a month of ledger, in set-based statements.
async fn fill(store: &Store, args: &ReadsArgs, today: Date) -> Result<(), sqlx::Error> {
    let pool = &store.pool;
    let now = crate::now_ms();
    sqlx::query(
        "INSERT INTO users (id, first_event_ms, last_event_ms)
         SELECT g, $2 - 30 * 86400000::int8, $2 FROM generate_series(1, $1::int8) g",
    )
    .bind(args.users)
    .bind(now)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO identities (id, platform, external_id, user_id)
         SELECT g, 'discord', 'bench' || g, g FROM generate_series(1, $1::int8) g",
    )
    .bind(args.users)
    .execute(pool)
    .await?;
    // XP a day: 15 per message minute, minutes heavy-tailed (1 to ~400).
    sqlx::query(
        "INSERT INTO xp_ledger (identity_id, day, xp)
         SELECT g, DATE '1970-01-01' + $2 - d.ago, (15 * ceil(exp(random() * random() * 6)))::int8
         FROM generate_series(1, $1::int8) g
         CROSS JOIN LATERAL (SELECT DISTINCT floor(random() * 30)::int AS ago
                             FROM generate_series(1, $3) s WHERE g > 0) d",
    )
    .bind(args.users)
    .bind(day_of_date(today))
    .bind(args.active_days)
    .execute(pool)
    .await?;
    sqlx::query(
        "UPDATE users u SET xp = t.xp
         FROM (SELECT identity_id, sum(xp)::int8 AS xp FROM xp_ledger GROUP BY 1) t
         WHERE u.id = t.identity_id",
    )
    .execute(pool)
    .await?;
    sqlx::query("SELECT setval('users_id_seq', $1), setval('identities_id_seq', $1)")
        .bind(args.users.max(1))
        .execute(pool)
        .await?;
    sqlx::query("VACUUM ANALYZE users, identities, xp_ledger")
        .execute(pool)
        .await?;
    Ok(())
}

/// The leaderboard page as it was served before the standings: aggregated from the
/// ledger on every request (all time: a sort of the users).
async fn aggregate_top(
    store: &Store,
    period: Period,
    today: Date,
    offset: i64,
) -> Result<(), crate::store::StoreError> {
    let _: Vec<(i64, i64)> = match period.range(today, &Seasons::default()) {
        None => {
            sqlx::query_as(
                "SELECT id, xp FROM users
                 WHERE merged_into IS NULL AND first_event_ms IS NOT NULL
                 ORDER BY xp DESC, id LIMIT $1 OFFSET $2",
            )
            .bind(PAGE)
            .bind(offset)
            .fetch_all(&store.pool)
            .await?
        }
        Some((from, to)) => {
            sqlx::query_as(
                "SELECT i.user_id, sum(l.xp)::int8 AS earned
                 FROM xp_ledger l JOIN identities i ON i.id = l.identity_id
                 WHERE l.day >= $1 AND l.day < $2
                 GROUP BY i.user_id ORDER BY earned DESC, i.user_id LIMIT $3 OFFSET $4",
            )
            .bind(from)
            .bind(to)
            .bind(PAGE)
            .bind(offset)
            .fetch_all(&store.pool)
            .await?
        }
    };
    Ok(())
}

/// A member's positions in the three periods by aggregation: how many rank before them.
async fn aggregate_positions(
    store: &Store,
    uid: i64,
    today: Date,
) -> Result<(), crate::store::StoreError> {
    for period in Period::ALL {
        let _: Option<i64> = match period.range(today, &Seasons::default()) {
            None => {
                sqlx::query_scalar(
                    "SELECT 1 + (SELECT count(*) FROM users o
                                 WHERE o.merged_into IS NULL AND o.first_event_ms IS NOT NULL
                                   AND (o.xp > u.xp OR (o.xp = u.xp AND o.id < u.id)))
                     FROM users u WHERE u.id = $1",
                )
                .bind(uid)
                .fetch_optional(&store.pool)
                .await?
            }
            Some((from, to)) => {
                sqlx::query_scalar(
                    "WITH t AS (SELECT i.user_id, sum(l.xp) AS earned
                                FROM xp_ledger l JOIN identities i ON i.id = l.identity_id
                                WHERE l.day >= $1 AND l.day < $2 GROUP BY 1)
                     SELECT 1 + (SELECT count(*) FROM t o
                                 WHERE o.earned > me.earned
                                    OR (o.earned = me.earned AND o.user_id < me.user_id))
                     FROM t me WHERE me.user_id = $3",
                )
                .bind(from)
                .bind(to)
                .bind(uid)
                .fetch_optional(&store.pool)
                .await?
            }
        };
    }
    Ok(())
}
