//! The `ttfd` command line. Each subcommand is one role or one operator task; each is a
//! short function over library code.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use ttfd_shared::view::Period;
use ttfd_shared::view::text::{self, Markup};
use ttfd_shared::{Identity, wire};

use crate::app::{self, Role, connect_broker, connect_store, demo};
use crate::moderation::{self, Request, Verb};
use crate::settings::Settings;
use crate::store::Store;
use crate::store::audit::AuditQuery;
use crate::{bench, now_ms, replay, shutdown, telemetry};

/// TTFD Unified: one profile per person across Discord, Telegram, the website and any
/// platform that publishes events.
#[derive(Debug, Parser)]
#[command(name = "ttfd", version)]
pub struct Cli {
    /// A TOML settings file; `TTFD__SECTION__KEY` environment variables override it.
    #[arg(long, global = true, env = "TTFD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one sync consumer replica (events → PostgreSQL) and its outbox relay.
    Sync,
    /// Serve profiles, leaderboards and link codes over NATS request-reply (for the
    /// bots, which hold no database credentials). Run as many replicas as you like.
    Query,
    /// Run the Discord bot: messages and voice time in, rank roles out, slash commands
    /// (needs `discord.token` and `discord.guild_id`; see docs/discord.md).
    Discord {
        #[command(subcommand)]
        command: Option<DiscordCommand>,
    },
    /// Serve the website, the HTTP API (with event ingest) and /healthz, /readyz, /metrics.
    Web,
    /// Run the Telegram bot: group messages become events, commands are answered,
    /// rank-ups announced. Needs `telegram.token` (docs/telegram.md).
    Telegram,
    /// Apply the database migrations.
    Migrate,
    /// NATS provisioning.
    Nats {
        #[command(subcommand)]
        command: NatsCommand,
    },
    /// Publish events given as JSON envelopes (SPEC 4), as an argument or one per line
    /// on stdin. `v` defaults to 1 and `ts` to now.
    Publish {
        /// One JSON object; without it, JSON lines are read from stdin.
        json: Option<String>,
    },
    /// Show the unified user owning an identity, e.g. `discord:80351110224678912`.
    User {
        identity: String,
        #[arg(long)]
        json: bool,
    },
    /// Show where a member's XP of a period came from: by source, platform and day, and
    /// the voice time that paid nothing, with why (docs/rules.md, "The XP statement").
    Statement {
        /// An identity of the member, e.g. `discord:80351110224678912`.
        identity: String,
        /// `all`, `week`, `month` or `season` (the season on now).
        #[arg(long, default_value = "week")]
        period: Period,
        /// A season by name instead of `--period`.
        #[arg(long, conflicts_with = "period")]
        season: Option<String>,
        /// A day (YYYY-MM-DD, UTC) in the week or month to show instead of the current one.
        #[arg(long, value_parser = parse_day)]
        at: Option<time::Date>,
        #[arg(long)]
        json: bool,
    },
    /// Show a leaderboard.
    Top {
        /// `all`, `week`, `month` or `season` (the season on now).
        #[arg(long, default_value = "all")]
        period: Period,
        /// A season by name, past, current or to come (`ttfd seasons` lists them).
        #[arg(long, conflicts_with = "period")]
        season: Option<String>,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Rows to skip: `--offset 50000` is page 2,001 of 25 rows, as fast as the first.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        offset: i64,
        /// A day (YYYY-MM-DD, UTC) in the week or month to show instead of the current
        /// one: `--period week --at 2026-11-25` is that week's final leaderboard.
        #[arg(long, value_parser = parse_day)]
        at: Option<time::Date>,
        #[arg(long)]
        json: bool,
    },
    /// Bring the old bots' and website's data in as events (docs/import.md).
    Import(Box<crate::import::ImportArgs>),
    /// Deliver the events stream again from a time or sequence through the apply path
    /// (e.g. after restoring a backup). Safe while `ttfd sync` runs; resumable. Exit
    /// code 3 when interrupted. See docs/replay.md.
    Replay(replay::ReplayArgs),
    /// Recompute every projection from the whole events stream into fresh tables and
    /// swap them in; `--check` compares instead (exit code 1 on differences). Exit code
    /// 3 when interrupted. See docs/replay.md.
    Rebuild(replay::rebuild::RebuildArgs),
    /// Copy the projection tables into a schema `ttfd_snapshot_<ms>`, for `ttfd rebuild
    /// --from-snapshot` once the stream's retention removed the first events.
    Snapshot,
    /// Run the whole pipeline locally with synthetic activity (no bot tokens needed).
    Demo(demo::DemoArgs),
    /// Measure throughput and latency against a raw-consumer baseline.
    Bench(bench::BenchArgs),
    /// Give or take a member's XP by hand, with a reason; recorded in the audit log as
    /// done by `cli:<your user name>` (docs/moderation.md). Waits until it is applied
    /// and prints the new total.
    Xp {
        #[command(subcommand)]
        command: XpCommand,
    },
    /// Everything held about a member, as one JSON document (docs/privacy.md): the
    /// profile, every identity, the ledger by day, links, preferences, the audit entries
    /// about them, and every event of theirs the events stream still holds.
    Export {
        /// Any identity of the member, e.g. `discord:123`.
        identity: String,
        /// Write the document to this file instead of standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Erase a member (SPEC 7.4, `forget`): every account of their profile, up to now,
    /// goes from every projection and from the streams; what they do later starts over.
    /// Recorded as done by `cli:<your user name>`; waits until the erasure is finished.
    Forget {
        /// The account, e.g. `discord:123`.
        identity: String,
        /// Why (1 to 64 characters).
        #[arg(long)]
        reason: String,
    },
    /// Undo a wrong link (SPEC 7.4): every link joining the two accounts directly, up to
    /// now, stops counting, and their user splits if nothing else joins them; recorded in
    /// the audit log as done by `cli:<your user name>`. Waits until it is applied.
    Unlink {
        /// One account, e.g. `telegram:123`.
        account: String,
        /// The account it is linked to, e.g. `discord:456`.
        from: String,
        /// Why (1 to 64 characters; it goes into the audit log).
        #[arg(long)]
        reason: String,
    },
    /// The seasons, newest first: their days, status, and a closed season's champions
    /// (docs/seasons.md).
    Seasons {
        #[arg(long)]
        json: bool,
    },
    /// Read the audit log: who changed whose XP, or linked whom, and why; newest first.
    Audit {
        /// Only entries about this member (any identity of their unified user).
        #[arg(long)]
        member: Option<String>,
        /// Only entries made by this moderator, e.g. `discord:123` or `cli:ops`.
        #[arg(long)]
        by: Option<String>,
        /// Only entries from this day on (YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_day)]
        since: Option<time::Date>,
        /// Only entries before this day (YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_day)]
        until: Option<time::Date>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        offset: i64,
        #[arg(long)]
        json: bool,
    },
}

/// `ttfd xp <verb>`.
#[derive(Debug, Subcommand)]
pub enum XpCommand {
    /// Add XP: `ttfd xp add discord:123 500 --reason "event winner"`.
    Add {
        #[command(flatten)]
        who: XpTarget,
        amount: u32,
    },
    /// Take XP away.
    Remove {
        #[command(flatten)]
        who: XpTarget,
        amount: u32,
    },
    /// Bring the member's XP to exactly this (publishes the difference).
    Set {
        #[command(flatten)]
        who: XpTarget,
        #[arg(allow_negative_numbers = true)]
        xp: i64,
    },
    /// Bring the member's XP to 0.
    Reset {
        #[command(flatten)]
        who: XpTarget,
    },
}

/// Whose XP, why, and the request's own id.
#[derive(Debug, clap::Args)]
pub struct XpTarget {
    /// `platform:user`, e.g. `discord:80351110224678912`.
    member: String,
    /// Why: it goes into the audit log (1 to 64 characters).
    #[arg(long)]
    reason: String,
    /// An id of this request of your own: running the command again with the same id
    /// counts once. Without it, a repeat counts once until the first has been applied.
    #[arg(long)]
    request_id: Option<String>,
    #[arg(long)]
    json: bool,
}

/// `ttfd discord <task>`.
#[derive(Debug, Subcommand)]
pub enum DiscordCommand {
    /// Give every guild member the rank roles of their rank and take the others away
    /// (run it after changing `discord.rank_roles` or `discord.rank_role_mode`). Waits
    /// out Discord's rate limits; interrupted, it says how to resume.
    SyncRoles {
        /// Resume after this member (user id), as an interrupted run printed.
        #[arg(long)]
        after: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    /// Create or update the streams and the shared sync consumer from `nats/`.
    Setup,
}

/// A day as `YYYY-MM-DD`.
fn parse_day(s: &str) -> Result<time::Date, String> {
    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|e| format!("expected a day as YYYY-MM-DD: {e}"))
}

/// Finishes the standings refresher's committed work, so that the operator's reads
/// include every committed batch; a database role that may not write the standings
/// reads them as the refresher left them.
async fn drain_standings(store: &Store) {
    if let Err(e) = store.drain_standings().await {
        tracing::warn!(error = %e, "cannot bring the standings up to date; reading them as they are");
    }
}

/// Runs the command; errors come back as one line for `main` to print.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    match cli.command {
        Command::Sync => app::run(Role::Sync, &settings, shutdown::on_signals()).await?,
        Command::Query => app::run(Role::Query, &settings, shutdown::on_signals()).await?,
        Command::Discord { command: None } => {
            app::run(Role::Discord, &settings, shutdown::on_signals()).await?
        }
        Command::Discord {
            command: Some(DiscordCommand::SyncRoles { after }),
        } => return sync_roles(&settings, after).await,
        Command::Web => app::run(Role::Web, &settings, shutdown::on_signals()).await?,
        Command::Telegram => app::run(Role::Telegram, &settings, shutdown::on_signals()).await?,
        Command::Migrate => {
            let store = connect_store(&settings).await?;
            store.migrate().await?;
            // What a migration queued for the standings (a recompute, after the one
            // that added them) is done before the new version serves a leaderboard.
            store
                .drain_standings()
                .await
                .context("cannot bring the standings up to date")?;
            println!("database migrated");
        }
        Command::Nats {
            command: NatsCommand::Setup,
        } => {
            let broker = connect_broker(&settings, app::OPERATOR).await?;
            for line in broker.setup().await? {
                println!("{line}: ready");
            }
        }
        Command::Publish { json } => publish(&settings, json).await?,
        Command::User { identity, json } => {
            let identity = Identity::parse(&identity)?;
            let store = connect_store(&settings).await?;
            drain_standings(&store).await;
            let Some(p) = store.profile(&identity).await? else {
                bail!("no user has the identity {identity}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                let name = p.display_name.as_deref().unwrap_or("(no name)");
                println!(
                    "{}",
                    text::profile(name, &p, &settings.rules, Markup::Plain)
                );
                let ids: Vec<String> = p
                    .identities
                    .iter()
                    .map(|i| format!("{}:{}", i.platform, i.user))
                    .collect();
                println!("uid {} · identities {}", p.uid, ids.join(", "));
            }
        }
        Command::Statement {
            identity,
            period,
            season,
            at,
            json,
        } => {
            let identity = Identity::parse(&identity)?;
            let store = connect_store(&settings).await?;
            let Some(p) = store.profile(&identity).await? else {
                bail!("no user has the identity {identity}");
            };
            let today = at.unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
            let Some(statement) = store
                .statement(p.uid, period, season.as_deref(), today)
                .await?
            else {
                bail!(match season {
                    Some(name) => format!("no season named {name:?} (`ttfd seasons` lists them)"),
                    None => format!("no season is on {today} (`ttfd seasons` lists them)"),
                });
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&statement)?);
            } else {
                let name = p
                    .display_name
                    .clone()
                    .unwrap_or_else(|| text::fallback_name(p.uid));
                println!("{}", text::statement(&name, &statement, Markup::Plain));
                for day in statement.days.iter().rev() {
                    let mut parts = text::sources(&day.tally);
                    parts.extend(text::unpaid(&day.tally));
                    println!(
                        "  {} · {} XP · {}",
                        day.day,
                        day.tally.xp,
                        parts.join(" · ")
                    );
                }
            }
        }
        Command::Top {
            period,
            season,
            limit,
            offset,
            at,
            json,
        } => {
            let store = connect_store(&settings).await?;
            // The operator's reads include every committed batch: the CLI finishes the
            // refresher's work itself.
            drain_standings(&store).await;
            let today = at.unwrap_or_else(|| time::OffsetDateTime::now_utc().date());
            let Some(board) = store.board(period, season.as_deref(), today).await? else {
                anyhow::bail!(match season {
                    Some(name) => format!("no season named {name:?} (`ttfd seasons` lists them)"),
                    None => format!("no season is on {today} (`ttfd seasons` lists them)"),
                });
            };
            let rows = store.top(&board.key, limit, offset).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{}", text::top(&board.words(), &rows, Markup::Plain));
            }
        }
        Command::Import(args) => {
            crate::import::run(*args, async || {
                connect_broker(&settings, app::OPERATOR).await
            })
            .await?
        }
        Command::Replay(args) => {
            let progress = std::io::stderr().is_terminal();
            let (store, broker) = app::connect(&settings).await?;
            let report = replay::replay_with(
                store,
                broker,
                &settings,
                &args,
                progress,
                shutdown::on_signals(),
            )
            .await?;
            println!("{report}");
            if !report.complete {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Rebuild(args) => {
            let progress = std::io::stderr().is_terminal();
            let (store, broker) = app::connect(&settings).await?;
            let outcome = replay::rebuild::rebuild_with(
                store,
                broker,
                &settings,
                &args,
                progress,
                shutdown::on_signals(),
            )
            .await?;
            println!("{outcome}");
            match outcome {
                replay::rebuild::RebuildOutcome::Checked { comparison, .. }
                    if !comparison.is_same() =>
                {
                    return Ok(ExitCode::from(1));
                }
                replay::rebuild::RebuildOutcome::Interrupted => return Ok(ExitCode::from(3)),
                _ => {}
            }
        }
        Command::Snapshot => {
            let (store, broker) = app::connect(&settings).await?;
            let (schema, covers) = replay::rebuild::snapshot_with(&store, &broker).await?;
            println!("snapshot {schema}: every event up to stream sequence {covers}");
        }
        Command::Demo(args) => demo::run(&settings, args, shutdown::on_signals()).await?,
        Command::Bench(args) => bench::run(&settings, args).await?,
        Command::Xp { command } => adjust_xp(&settings, command).await?,
        Command::Export { identity, out } => {
            let identity = Identity::parse(&identity)?;
            let (store, broker) = (
                connect_store(&settings).await?,
                connect_broker(&settings, app::OPERATOR).await?,
            );
            let document =
                crate::privacy::export(&store, &broker, &identity, time::OffsetDateTime::now_utc())
                    .await?;
            let json = serde_json::to_string_pretty(&document)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, json + "\n")
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "{} events, {} ledger days, {} audit entries: {}",
                        document.events.len(),
                        document.ledger.len(),
                        document.audit.len(),
                        path.display()
                    );
                }
                None => println!("{json}"),
            }
        }
        Command::Forget { identity, reason } => {
            let identity = Identity::parse(&identity)?;
            if reason.trim().is_empty() || reason.trim().chars().count() > 64 {
                bail!("give a reason of 1 to 64 characters");
            }
            let (store, broker) = (
                connect_store(&settings).await?,
                connect_broker(&settings, app::OPERATOR).await?,
            );
            let events = crate::privacy::forget_member(
                &store,
                &broker,
                &identity,
                &reason,
                &operator()?,
                now_ms(),
            )
            .await?;
            let deadline = tokio::time::Instant::now() + moderation::CLI_WAIT;
            for event in &events {
                let mut done = false;
                while !done && tokio::time::Instant::now() < deadline {
                    done = crate::privacy::erased(&store, event).await?;
                    if !done {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
                if done {
                    println!(
                        "{} erased up to now ({})",
                        event.identity,
                        event.id.as_str()
                    );
                } else {
                    println!(
                        "{}: the erasure is stored, not finished yet (is `ttfd sync` running?) ({})",
                        event.identity,
                        event.id.as_str()
                    );
                }
            }
        }
        Command::Unlink {
            account,
            from,
            reason,
        } => {
            let request = moderation::UnlinkRequest {
                account: Identity::parse(&account)?,
                from: Some(Identity::parse(&from)?),
                reason,
                by: operator()?,
                request_id: None,
            };
            let (store, broker) = (
                connect_store(&settings).await?,
                connect_broker(&settings, app::OPERATOR).await?,
            );
            let done = moderation::unlink(
                &store,
                &broker,
                &settings.moderation,
                &request,
                now_ms(),
                moderation::CLI_WAIT,
            )
            .await?;
            println!("{done}");
        }
        Command::Seasons { json } => {
            let store = connect_store(&settings).await?;
            drain_standings(&store).await;
            let seasons = store
                .season_views(time::OffsetDateTime::now_utc().date())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&seasons)?);
            } else if seasons.is_empty() {
                println!("No seasons: add [[seasons]] to the settings (docs/seasons.md).");
            } else {
                for s in &seasons {
                    println!("{}", text::season(s, Markup::Plain));
                }
            }
        }
        Command::Audit {
            member,
            by,
            since,
            until,
            limit,
            offset,
            json,
        } => {
            let start_ms = |d: time::Date| d.midnight().assume_utc().unix_timestamp() * 1000;
            let query = AuditQuery {
                member: member.as_deref().map(Identity::parse).transpose()?,
                by: by.as_deref().map(Identity::parse).transpose()?,
                since_ms: since.map(start_ms),
                until_ms: until.map(start_ms),
                event_id: None,
                offset,
                limit,
            };
            let store = connect_store(&settings).await?;
            let (entries, total) = store.audit(&query).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                println!("no audit entries");
            } else {
                for e in &entries {
                    println!("{}", text::audit_entry(e));
                }
                println!("{} of {total} entries", entries.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ttfd discord sync-roles`, with a progress bar on a terminal.
async fn sync_roles(settings: &Settings, after: Option<u64>) -> anyhow::Result<ExitCode> {
    let store = connect_store(settings).await?;
    let stop = shutdown::on_signals();
    let terminal = std::io::stderr().is_terminal();
    let after = after.filter(|a| *a != 0).map(serenity::all::UserId::new);
    let last = std::cell::Cell::new(after);
    let mut bar: Option<replay::Progress> = None;
    let result = crate::discord::sync_roles(settings, store, after, &stop, |p, total| {
        last.set(p.last);
        bar.get_or_insert_with(|| replay::Progress::new("members", total.unwrap_or(0), terminal))
            .set(p.checked);
    })
    .await;
    if let Some(bar) = &bar {
        bar.finish();
    }
    match (result, last.get()) {
        (Ok(p), _) => {
            println!(
                "rank roles reconciled: {} members checked, {} changed",
                p.checked, p.changed
            );
            Ok(ExitCode::SUCCESS)
        }
        (Err(e), Some(last)) => bail!(
            "{e}; resume with `ttfd discord sync-roles --after {}`",
            last.get()
        ),
        (Err(e), None) => Err(e),
    }
}

/// `ttfd xp`: one adjustment by `cli:<os user>`.
async fn adjust_xp(settings: &Settings, command: XpCommand) -> anyhow::Result<()> {
    let (who, verb) = match command {
        XpCommand::Add { who, amount } => (who, Verb::Add(amount)),
        XpCommand::Remove { who, amount } => (who, Verb::Remove(amount)),
        XpCommand::Set { who, xp } => (who, Verb::Set(xp)),
        XpCommand::Reset { who } => (who, Verb::Reset),
    };
    let request = Request {
        target: Identity::parse(&who.member)?,
        verb,
        reason: who.reason,
        by: operator()?,
        request_id: who.request_id,
    };
    let (store, broker) = (
        connect_store(settings).await?,
        connect_broker(settings, app::OPERATOR).await?,
    );
    let done = moderation::adjust(
        &store,
        &broker,
        &settings.moderation,
        &request,
        now_ms(),
        moderation::CLI_WAIT,
    )
    .await?;
    if who.json {
        let out = serde_json::json!({
            "event_id": done.event.id.as_str(),
            "amount": done.amount,
            "xp": done.xp,
            "duplicate": done.duplicate,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{done}");
    }
    Ok(())
}

/// The operator at the terminal, as moderation records them: `cli:<os user>`.
fn operator() -> anyhow::Result<Identity> {
    let os_user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "operator".into());
    Ok(Identity::new("cli", &os_user)?)
}

async fn publish(settings: &Settings, json: Option<String>) -> anyhow::Result<()> {
    let lines: Vec<String> = match json {
        Some(j) => vec![j],
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("give an event as an argument or JSON lines on stdin");
            }
            stdin.lock().lines().collect::<Result<_, _>>()?
        }
    };
    let events = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| wire::from_json(l, now_ms()).with_context(|| format!("line {}", n + 1)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let broker = connect_broker(settings, app::OPERATOR).await?;
    for e in &events {
        let ack = broker
            .publish_event(e)
            .await?
            .await
            .context("JetStream did not store the event")?;
        let status = if ack.duplicate {
            "duplicate, ignored"
        } else {
            "stored"
        };
        println!(
            "{} → {} (seq {}, {status})",
            e.id.as_str(),
            broker
                .subjects
                .event(e.identity.platform.as_str(), e.kind()),
            ack.sequence
        );
    }
    Ok(())
}
