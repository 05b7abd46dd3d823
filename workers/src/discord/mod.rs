//! `ttfd discord`: the Discord bot role.
//!
//! - Guild messages by humans → `message` events; voice states → the voice-session
//!   state machine (`ttfd_shared::voice`) → `voice` segments at least every
//!   `discord.voice.segment_secs`; on every `GUILD_CREATE` (start-up, reconnect) the
//!   sessions are rebuilt from the guild's current voice states. Events go to NATS
//!   through one publisher task that retries until JetStream stores them.
//! - Rank roles and announcements from `<prefix>.notify.rank` ([`roles`]); the role is
//!   given again when a member rejoins.
//! - Slash commands `/rank`, `/top`, `/link` ([`commands`]) read through the query
//!   service (`ttfd query`): the bot holds no database credentials.
//!
//! [`mapping`] and [`commands`]' text builders are pure; [`DiscordBot`] holds the state
//! and is driven by serenity's gateway handler here, or directly by the tests.
//!
//! Reads the `discord` section ([`settings`]), `nats.*` and `rules.*`.

pub mod api;
pub mod commands;
pub mod mapping;
pub mod roles;
pub mod seasons;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use backon::ExponentialBuilder;
use serenity::all::{
    ClientBuilder, Context, CreateAttachment, CreateMessage, EventHandler, GatewayIntents, Guild,
    GuildChannel, GuildId, Interaction, Member, Message, Ready, UnavailableGuild, UserId,
    VoiceState,
};
use serenity::async_trait;
use serenity::http::Http;
use serenity::model::application::CommandInteraction;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use ttfd_shared::view::text;
use ttfd_shared::voice::{Segment, VoiceSessions};
use ttfd_shared::{Event, Rules};

pub use api::DiscordApi;

use crate::broker::Broker;
use crate::broker::notices::NoticeConsumer;
use crate::metrics::Metrics;
use crate::now_ms;
use crate::observe::discord::DiscordMetrics;
use crate::observe::{self, Readiness};
use crate::query::ExportOutcome;
use crate::query::QueryClient;
use crate::rates::{self, Boost, Rates};
use crate::settings::{DiscordSettings, Settings};
use mapping::MessageRules;
use roles::{Outcome, RankRoles, RoleSync};

/// How often open voice segments are checked for publication.
pub const TICK: Duration = Duration::from_secs(1);
/// Events waiting for the publisher; beyond this the gateway handler waits.
const QUEUE: usize = 10_000;
/// Retries of a rejoining member's role before it is left to their next rank change.
const MEMBER_ADD_ATTEMPTS: u32 = 20;

/// The bot's state, shared by the gateway handler, the voice ticker and the tests.
pub struct DiscordBot {
    guild: GuildId,
    ignored_channels: Vec<serenity::all::ChannelId>,
    content_visible: bool,
    voice: Mutex<VoiceSessions>,
    /// Display names seen in voice states, for `voice` events.
    names: Mutex<HashMap<u64, String>>,
    events: mpsc::Sender<Event>,
    pub roles: RoleSync,
    /// Closed seasons: the announcement and the winner role.
    pub seasons: seasons::SeasonSync,
    query: QueryClient,
    rules: Arc<Rules>,
    moderator_roles: Vec<serenity::all::RoleId>,
    /// `discord.xp_rates` and `[[boosts]]`: what `data.mult` an event carries.
    rates: Rates<u64>,
    boosts: Vec<Boost>,
    /// What the rates need to know of the guild: each channel's category, and the
    /// roles of the members seen in messages, voice states and the member list.
    categories: Mutex<HashMap<u64, u64>>,
    member_roles: Mutex<HashMap<u64, Vec<u64>>>,
    /// A `/ranks sync` is running.
    syncing_roles: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
}

impl DiscordBot {
    pub fn new(
        settings: &Settings,
        guild: GuildId,
        api: DiscordApi,
        query: QueryClient,
        events: mpsc::Sender<Event>,
        shutdown: CancellationToken,
    ) -> Self {
        let d = &settings.discord;
        let rules = Arc::new(settings.rules.clone());
        Self {
            guild,
            ignored_channels: d.ignored_channels.clone(),
            content_visible: d.message_content,
            voice: Mutex::new(VoiceSessions::new(
                d.voice.rules(settings.rules.voice_xp_per_minute),
            )),
            names: Mutex::new(HashMap::new()),
            events,
            seasons: seasons::SeasonSync {
                api: api.clone(),
                guild,
                channel: d.announce_channel,
                // Checked when the settings were loaded.
                roles: settings
                    .champions
                    .roles()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(period, id)| (period, serenity::all::RoleId::new(id)))
                    .collect(),
            },
            roles: RoleSync {
                api,
                profiles: roles::Profiles::Query(query.clone()),
                guild,
                roles: Arc::new(RankRoles::with_mode(
                    &d.rank_roles,
                    &rules,
                    d.rank_role_mode,
                )),
                announce_to: d.announce.to,
                announce_channel: d.announce_channel,
                // Checked when the settings were loaded.
                templates: Arc::new(d.announce.templates(&rules).unwrap_or_else(|_| {
                    crate::settings::discord::DiscordAnnounce::default()
                        .templates(&rules)
                        .expect("the default templates are valid")
                })),
                rules: rules.clone(),
                metrics: DiscordMetrics::default(),
            },
            query,
            rules,
            moderator_roles: d.moderator_roles.clone(),
            // Checked when the settings were loaded.
            rates: d.xp_rates.rates().unwrap_or_default(),
            boosts: crate::settings::rates::boosts(&settings.boosts).unwrap_or_default(),
            categories: Mutex::new(HashMap::new()),
            member_roles: Mutex::new(HashMap::new()),
            syncing_roles: Arc::default(),
            shutdown,
        }
    }

    /// Records role changes and notices in `metrics` (`ttfd_discord_*`).
    pub fn with_metrics(mut self, metrics: DiscordMetrics) -> Self {
        self.roles.metrics = metrics;
        self
    }

    pub fn guild(&self) -> GuildId {
        self.guild
    }

    async fn send(&self, events: Vec<Event>) {
        for e in events {
            if self.events.send(e).await.is_err() {
                // Only after shutdown, when the publisher has stopped.
                warn!("event publisher stopped; event not sent");
            }
        }
    }

    /// A `MESSAGE_CREATE`.
    pub async fn on_message(&self, msg: &Message) {
        let rules = MessageRules {
            guild: self.guild,
            ignored_channels: &self.ignored_channels,
            content_visible: self.content_visible,
        };
        if let Some(mut event) = mapping::message_event(msg, &rules) {
            if let Some(member) = &msg.member {
                let roles = member.roles.iter().map(|r| r.get()).collect();
                lock(&self.member_roles).insert(msg.author.id.get(), roles);
            }
            let mult = self.mult(msg.channel_id.get(), msg.author.id.get(), event.ts);
            event.payload.set_mult(mult);
            self.send(vec![event]).await;
        }
    }

    /// `/ranks sync`: reconciles every member's rank roles in the background (one run
    /// at a time) and posts a summary in `channel`.
    /// `/gdpr export`: asks the query service for the member's export and sends it to
    /// them by direct message (a refusal, too, says why there).
    fn spawn_export(&self, user: UserId) {
        let (api, query) = (self.roles.api.clone(), self.query.clone());
        tokio::spawn(async move {
            let message = match query.export(&mapping::identity(user)).await {
                Ok(ExportOutcome::File { name, json }) => CreateMessage::new()
                    .content("Everything TTFD holds about you, as you asked (`/gdpr export`).")
                    .add_file(CreateAttachment::bytes(json.into_bytes(), name)),
                Ok(ExportOutcome::Refused(why)) => {
                    CreateMessage::new().content(format!("Your data was not sent: {why}."))
                }
                Err(e) => {
                    warn!(error = %e, "cannot gather an export");
                    CreateMessage::new().content(
                        "Your data cannot be gathered right now; try `/gdpr export` again later.",
                    )
                }
            };
            let sent = match api.dm_channel(user).await {
                Ok(channel) => channel
                    .send_message(&*api.http, message)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = sent {
                warn!(error = %e, "cannot send an export by direct message");
            }
        });
    }

    fn spawn_roles_sync(&self, channel: serenity::all::ChannelId) {
        if self
            .syncing_roles
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let (roles, stop, running) = (
            self.roles.clone(),
            self.shutdown.clone(),
            self.syncing_roles.clone(),
        );
        tokio::spawn(async move {
            let text = match roles.sync_all(None, &stop, |_| {}).await {
                Ok(p) => format!(
                    "Rank roles reconciled: {} members checked, {} changed.",
                    text::thousands(i64::try_from(p.checked).unwrap_or(i64::MAX)),
                    text::thousands(i64::try_from(p.changed).unwrap_or(i64::MAX))
                ),
                Err(e) => {
                    format!("Rank roles not reconciled: {e}. Run /ranks sync again to resume.")
                }
            };
            let nonce = format!("ranks-sync-{}", now_ms() % 1_000_000_000);
            if let Err(e) = roles.api.post_message(channel, &text, &nonce).await {
                warn!(error = %e, "cannot post the /ranks sync summary");
            }
            running.store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// `data.mult` of an event at `ts` in `channel` by `user` (`crate::rates`).
    fn mult(&self, channel: u64, user: u64, ts: i64) -> Option<u16> {
        let category = lock(&self.categories).get(&channel).copied();
        let roles = lock(&self.member_roles)
            .get(&user)
            .cloned()
            .unwrap_or_default();
        let boost = rates::boost(&self.boosts, mapping::PLATFORM, ts);
        self.rates.mult(&channel, category.as_ref(), &roles, boost)
    }

    /// A channel created or changed: its category, for the category rates.
    pub fn on_channel(&self, channel: &GuildChannel) {
        if channel.guild_id != self.guild {
            return;
        }
        let mut categories = lock(&self.categories);
        match channel.parent_id {
            Some(parent) => categories.insert(channel.id.get(), parent.get()),
            None => categories.remove(&channel.id.get()),
        };
    }

    /// A `VOICE_STATE_UPDATE`.
    pub async fn on_voice_state(&self, state: &VoiceState, now: i64) {
        if state.guild_id != Some(self.guild) {
            return;
        }
        if let Some((user, name)) = mapping::voice_name(state) {
            self.lock_names().insert(user, name);
        }
        if let Some(member) = &state.member {
            let roles = member.roles.iter().map(|r| r.get()).collect();
            lock(&self.member_roles).insert(state.user_id.get(), roles);
        }
        let segments = self.lock_voice().update(mapping::voice_update(state), now);
        self.send_segments(segments).await;
    }

    /// A `GUILD_CREATE`: at start-up and after every new gateway session. Members
    /// already in voice start counting now.
    pub async fn on_guild_create(&self, guild: &Guild, now: i64) {
        if guild.id != self.guild {
            return;
        }
        let voice = mapping::guild_voice(guild);
        self.lock_names().extend(voice.names);
        *lock(&self.categories) = guild
            .channels
            .values()
            .filter_map(|c| Some((c.id.get(), c.parent_id?.get())))
            .collect();
        lock(&self.member_roles).extend(
            guild
                .members
                .values()
                .map(|m| (m.user.id.get(), m.roles.iter().map(|r| r.get()).collect())),
        );
        let (segments, in_voice) = {
            let mut sessions = self.lock_voice();
            let segments = sessions.rebuild(voice.states, voice.afk_channel, now);
            (segments, sessions.in_voice())
        };
        info!(guild = self.guild.get(), in_voice, "voice sessions rebuilt");
        self.send_segments(segments).await;
    }

    /// The guild went unavailable (a Discord outage): nothing can be tracked until it
    /// comes back with a `GUILD_CREATE`.
    pub async fn on_guild_unavailable(&self, now: i64) {
        let segments = self.lock_voice().close_all(now);
        self.send_segments(segments).await;
    }

    /// Publishes segments that reached their length; call every [`TICK`].
    pub async fn tick(&self, now: i64) {
        let segments = self.lock_voice().tick(now);
        self.send_segments(segments).await;
    }

    /// Publishes every open segment (graceful shutdown).
    pub async fn close(&self, now: i64) {
        let segments = self.lock_voice().close_all(now);
        self.send_segments(segments).await;
    }

    /// Whether `user`'s voice time is being counted now.
    pub fn is_counting(&self, user: UserId) -> bool {
        self.lock_voice().is_counting(user.get())
    }

    async fn send_segments(&self, segments: Vec<Segment>) {
        if segments.is_empty() {
            return;
        }
        let events: Vec<Event> = {
            let names = self.lock_names();
            segments
                .iter()
                .map(|s| mapping::voice_event(self.guild, s, names.get(&s.user).cloned()))
                .collect()
        };
        let events = events
            .into_iter()
            .zip(&segments)
            .map(|(mut e, s)| {
                if s.unpaid.is_none() {
                    e.payload.set_mult(self.mult(s.channel, s.user, e.ts));
                }
                e
            })
            .collect();
        self.send(events).await;
    }

    /// A `GUILD_MEMBER_ADD`: a member who rejoins gets their rank role back. Retried
    /// in the background on rate limits and outages.
    pub async fn on_member_add(&self, member: &Member) {
        if member.guild_id != self.guild || member.user.bot {
            return;
        }
        let user = member.user.id;
        for attempt in 1..=MEMBER_ADD_ATTEMPTS {
            match self.roles.sync_member(user, None, attempt).await {
                Outcome::Done => return,
                Outcome::RetryAfter(delay) => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        error!(
            user = user.get(),
            "rank role of a joining member not set after {MEMBER_ADD_ATTEMPTS} attempts; \
             it is set at their next rank change"
        );
    }

    /// A slash command.
    pub async fn on_command(&self, http: &Http, cmd: &CommandInteraction) {
        match commands::parse(cmd) {
            Some(commands::SlashCommand::RanksSync)
                if commands::is_moderator(cmd, &self.moderator_roles) =>
            {
                self.spawn_roles_sync(cmd.channel_id);
            }
            Some(commands::SlashCommand::GdprExport) => self.spawn_export(cmd.user.id),
            Some(commands::SlashCommand::Prefs(pref)) => {
                self.send(vec![mapping::prefs_event(cmd, pref)]).await;
            }
            _ => {}
        }
        let asked = commands::Asked {
            query: &self.query,
            rules: &self.rules,
            moderator_roles: &self.moderator_roles,
        };
        if let Err(e) = commands::answer(http, cmd, &asked).await {
            warn!(error = %e, command = %cmd.data.name, "slash command reply failed");
        }
    }

    fn lock_voice(&self) -> std::sync::MutexGuard<'_, VoiceSessions> {
        lock(&self.voice)
    }

    fn lock_names(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        lock(&self.names)
    }
}

/// Publishes events until `done` is cancelled and the queue is empty; each event is
/// retried with backoff until JetStream stores it, for at most `grace` after `done`.
pub async fn publish_events(
    broker: Broker,
    queue: mpsc::Receiver<Event>,
    done: CancellationToken,
    grace: Duration,
) {
    publish_events_with(broker, queue, done, grace, DiscordMetrics::default()).await;
}

/// As [`publish_events`], counting publications and retries in `metrics`.
pub async fn publish_events_with(
    broker: Broker,
    mut queue: mpsc::Receiver<Event>,
    done: CancellationToken,
    grace: Duration,
    metrics: DiscordMetrics,
) {
    let drain_until = OnceLock::new();
    loop {
        let event = tokio::select! {
            biased;
            e = queue.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = done.cancelled() => match queue.try_recv() {
                Ok(e) => e,
                Err(_) => break,
            },
        };
        // Once stopping, every event still queued shares one deadline: `grace` from then.
        let give_up = async {
            done.cancelled().await;
            tokio::time::sleep_until(*drain_until.get_or_init(|| Instant::now() + grace)).await;
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let stored = broker.publish_until_stored(&event, backoff, give_up, |e, _| {
            metrics.bot.publish_retries.inc();
            warn!(id = event.id.as_str(), error = %e, "publishing failed; retrying");
        });
        match stored.await {
            Ok(()) => {
                debug!(id = event.id.as_str(), "event stored");
                metrics.bot.published(event.kind());
            }
            Err(e) => {
                error!(id = event.id.as_str(), error = %e, "event not stored before shutdown")
            }
        }
    }
}

/// Serenity's gateway events, handed to the bot.
struct Handler {
    bot: Arc<DiscordBot>,
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        info!(user = %ready.user.name, shard = ?ready.shard, "connected to the Discord gateway");
        match self
            .bot
            .guild()
            .set_commands(&ctx.http, commands::definitions())
            .await
        {
            Ok(c) => info!(commands = c.len(), "slash commands registered"),
            Err(e) => error!(error = %e, "slash commands not registered"),
        }
    }

    async fn guild_create(&self, _ctx: Context, guild: Guild, _is_new: Option<bool>) {
        self.bot.on_guild_create(&guild, now_ms()).await;
    }

    async fn guild_delete(
        &self,
        _ctx: Context,
        incomplete: UnavailableGuild,
        _full: Option<Guild>,
    ) {
        if incomplete.id == self.bot.guild() {
            warn!(unavailable = incomplete.unavailable, "the guild went away");
            self.bot.on_guild_unavailable(now_ms()).await;
        }
    }

    async fn message(&self, _ctx: Context, msg: Message) {
        self.bot.on_message(&msg).await;
    }

    async fn channel_create(&self, _ctx: Context, channel: GuildChannel) {
        self.bot.on_channel(&channel);
    }

    async fn channel_update(&self, _ctx: Context, _old: Option<GuildChannel>, new: GuildChannel) {
        self.bot.on_channel(&new);
    }

    async fn voice_state_update(&self, _ctx: Context, _old: Option<VoiceState>, new: VoiceState) {
        self.bot.on_voice_state(&new, now_ms()).await;
    }

    async fn guild_member_addition(&self, _ctx: Context, member: Member) {
        self.bot.on_member_add(&member).await;
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        if let Interaction::Command(cmd) = interaction {
            self.bot.on_command(&ctx.http, &cmd).await;
        }
    }
}

/// The gateway intents the bot asks for. GUILD_MEMBERS and MESSAGE_CONTENT are
/// privileged: they must be switched on in the developer portal.
pub fn intents(settings: &DiscordSettings) -> GatewayIntents {
    let mut intents = GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::GUILD_VOICE_STATES
        | GatewayIntents::GUILD_MEMBERS;
    if settings.message_content {
        intents |= GatewayIntents::MESSAGE_CONTENT;
    }
    intents
}

/// The role: runs until `shutdown`, then publishes open voice segments and stops.
/// Events still queued at shutdown are published for at most `grace`.
pub async fn run(
    settings: &Settings,
    broker: Broker,
    grace: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let d = &settings.discord;
    let (token, guild) = d.require()?;
    let query = QueryClient::new(
        broker.client.clone(),
        &settings.nats.prefix,
        Duration::from_millis(d.query_timeout_ms),
    );
    let api = DiscordApi::new(token, d.api_url.as_deref());
    let (tx, rx) = mpsc::channel(QUEUE);
    let registry = Metrics::new();
    let metrics = DiscordMetrics::register(&registry);
    observe::serve(
        &settings.metrics,
        registry,
        Readiness::new().nats(broker.clone()),
        shutdown.clone(),
    )
    .await?;
    let bot = Arc::new(
        DiscordBot::new(settings, guild, api, query, tx, shutdown.clone())
            .with_metrics(metrics.clone()),
    );
    let published = CancellationToken::new();
    let publisher = tokio::spawn(publish_events_with(
        broker.clone(),
        rx,
        published.clone(),
        grace,
        metrics,
    ));
    let notices = NoticeConsumer::open(&broker, roles::POLICY).await?;
    let role_task = tokio::spawn(notices.run(Arc::new(bot.roles.clone()), shutdown.clone()));
    let season_notices = NoticeConsumer::open(&broker, seasons::POLICY).await?;
    let season_task =
        tokio::spawn(season_notices.run(Arc::new(bot.seasons.clone()), shutdown.clone()));
    let ticker = {
        let (bot, stop) = (bot.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => bot.tick(now_ms()).await,
                }
            }
        })
    };

    // The gateway client gets an Http of its own (serenity takes it by value); its rate
    // limits (slash-command replies, command registration) are apart from the roles'.
    let http = api::build_http(token, d.api_url.as_deref(), reqwest::Client::new());
    let mut client = ClientBuilder::new_with_http(http, intents(d))
        .event_handler(Handler { bot: bot.clone() })
        .await
        .context("cannot start the Discord client")?;
    let shards = client.shard_manager.clone();
    let range = d.shards.range();
    let (first, last) = (*range.start(), *range.end());
    info!(guild = guild.get(), shards = ?range, total = d.shards.total, "starting the Discord gateway");
    let outcome = tokio::select! {
        // Serenity 0.12 reads the end of this range as inclusive (its own
        // `start_shards(n)` passes `0..n - 1`).
        r = client.start_shard_range(first..last, d.shards.total) => r.map_err(gateway_error),
        _ = shutdown.cancelled() => Ok(()),
    };
    shards.shutdown_all().await;
    shutdown.cancel();
    let _ = ticker.await;
    bot.close(now_ms()).await;
    published.cancel();
    let _ = publisher.await;
    if let Err(e) = role_task.await {
        warn!(error = %e, "rank notice consumer panicked");
    }
    if let Err(e) = season_task.await {
        warn!(error = %e, "season notice consumer panicked");
    }
    outcome
}

/// Gateway failures an operator can fix, said in their terms.
fn gateway_error(e: serenity::Error) -> anyhow::Error {
    use serenity::gateway::GatewayError;
    match e {
        serenity::Error::Gateway(GatewayError::InvalidAuthentication) => {
            anyhow::anyhow!("Discord refused the bot token (discord.token)")
        }
        serenity::Error::Gateway(GatewayError::DisallowedGatewayIntents) => anyhow::anyhow!(
            "Discord refused the intents: switch on SERVER MEMBERS INTENT and MESSAGE CONTENT \
             INTENT for the bot in the developer portal, or set discord.message_content = false \
             (docs/discord.md)"
        ),
        other => anyhow::anyhow!("Discord gateway: {other}"),
    }
}

/// A lock of the bot's small state maps; nothing panics while one is held, so a
/// poisoned lock still holds consistent state.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `ttfd discord sync-roles`: reconciles every guild member's rank roles with their
/// profile, read from the database (no bot or query service needed), from the member
/// after `after`; `progress` hears how far it got (of about `total` members).
pub async fn sync_roles(
    settings: &Settings,
    store: crate::store::Store,
    after: Option<UserId>,
    stop: &CancellationToken,
    progress: impl FnMut(&roles::SyncProgress, Option<u64>),
) -> Result<roles::SyncProgress, anyhow::Error> {
    let d = &settings.discord;
    let (token, guild) = d.require()?;
    let rules = Arc::new(settings.rules.clone());
    let sync = RoleSync {
        api: DiscordApi::new(token, d.api_url.as_deref()),
        profiles: roles::Profiles::Store(store),
        guild,
        roles: Arc::new(RankRoles::with_mode(
            &d.rank_roles,
            &rules,
            d.rank_role_mode,
        )),
        announce_to: crate::settings::discord::DiscordAnnounceTo::Off,
        announce_channel: None,
        templates: Arc::new(d.announce.templates(&rules)?),
        rules,
        metrics: DiscordMetrics::default(),
    };
    if sync.roles.is_empty() {
        anyhow::bail!("discord.rank_roles is empty: there are no rank roles to give");
    }
    let total = sync.api.member_count(guild).await.ok().flatten();
    let mut progress = progress;
    Ok(sync.sync_all(after, stop, |p| progress(p, total)).await?)
}
