//! The server-rendered pages: leaderboard, rank ladder, profiles, sign-in, errors.
//! Templates live in `workers/templates/` (askama: checked at compile time, every value
//! HTML-escaped unless marked otherwise, and nothing here is).

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum_extra::extract::SignedCookieJar;
use time::{Duration, OffsetDateTime};
use ttfd_shared::Rules;

use super::AppState;
use super::api::{BoardQuery, ladder, load_board};
use super::chart::{Chart, xp_chart};
use super::session::{Flash, Session};
use crate::now_ms;
use ttfd_shared::view::text;
use ttfd_shared::view::{Period, PeriodStanding, Profile, RankBadge, Statement, Tally, badge};

/// Days shown in the profile chart.
pub const CHART_DAYS: u16 = 30;
/// How long a page waits for a link to be applied before it stops refreshing, in ms.
const PENDING_REFRESH_MS: i64 = 2 * 60 * 1000;

pub const STYLE_CSS: &str = include_str!("../../static/style.css");

// ---------------------------------------------------------------------------------
// View models: everything a template shows, already formatted.

pub struct Layout {
    /// The signed-in member as shown in the header.
    pub who: Option<String>,
    pub flash: Option<FlashView>,
}

pub struct FlashView {
    /// CSS class: `ok`, `info` or `error`.
    pub kind: &'static str,
    pub text: String,
    pub code: Option<String>,
}

impl FlashView {
    fn from(flash: Flash) -> Self {
        let (kind, text, code) = match flash {
            Flash::SignedIn => ("ok", "Signed in.".to_owned(), None),
            Flash::SignedOut => ("info", "Signed out.".to_owned(), None),
            Flash::SignedOutEverywhere => ("info", "Signed out in every browser.".to_owned(), None),
            Flash::LinkRecorded => (
                "info",
                "Link recorded; your profiles are being merged.".to_owned(),
                None,
            ),
            Flash::Linked => (
                "ok",
                "Accounts linked: this is your merged profile.".to_owned(),
                None,
            ),
            Flash::AlreadyLinked => (
                "info",
                "These accounts are already linked.".to_owned(),
                None,
            ),
            Flash::CodeIssued { code, expires_ms } => (
                "ok",
                format!(
                    "Send this code to the Telegram or Discord bot (/link CODE) before {}:",
                    clock(expires_ms)
                ),
                Some(code),
            ),
            Flash::Ok { message } => ("ok", message, None),
            Flash::Error { message } => ("error", message, None),
        };
        Self { kind, text, code }
    }
}

fn badge_by_name(rules: &Rules, name: &str) -> RankBadge {
    let index = rules
        .ranks
        .iter()
        .position(|r| r.name == name)
        .map_or(1, |i| u8::try_from(i + 1).unwrap_or(u8::MAX));
    badge(rules, index)
}

/// `12345` → `12,345`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `3725` seconds → `1 h 2 min`.
fn duration_words(seconds: i64) -> String {
    let minutes = seconds.max(0) / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{} h", thousands(h)),
        (h, m) => format!("{} h {m} min", thousands(h)),
    }
}

/// `HH:MM UTC` of a Unix ms time.
fn clock(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms / 1000)
        .map(|t| format!("{:02}:{:02} UTC", t.hour(), t.minute()))
        .unwrap_or_default()
}

/// The date part of an RFC 3339 time.
fn day_of(rfc3339: &Option<String>) -> Option<String> {
    rfc3339.as_ref().map(|s| s.chars().take(10).collect())
}

pub struct NextRank {
    pub badge: RankBadge,
    pub missing: String,
    pub percent: u8,
    pub from: String,
    pub to: String,
}

pub struct IdentityView {
    pub platform: String,
    /// The account id, shown to its owner only.
    pub user: Option<String>,
}

/// A place in one period's leaderboard, linking to the page that shows it.
pub struct PlaceView {
    pub words: String,
    /// "#12", or "—" when not ranked.
    pub place: String,
    pub ranked: String,
    pub href: String,
}

impl PlaceView {
    /// A place on a current period's board, or on a season's named (`named`).
    fn of(s: &PeriodStanding, named: bool) -> Self {
        let season = s.key.strip_prefix(ttfd_shared::seasons::KEY_PREFIX);
        let board = match season {
            Some(name) => format!("/leaderboard?season={name}"),
            None => format!("/leaderboard?period={}", s.period.as_str()),
        };
        let (place, href) = match s.position {
            Some(n) => {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                let page = (n - 1) / crate::web::api::DEFAULT_PER_PAGE + 1;
                (format!("#{}", thousands(n)), format!("{board}&page={page}"))
            }
            None => ("—".to_owned(), board),
        };
        PlaceView {
            words: match season {
                Some(name) if named => format!("in {name}"),
                _ => s.period.words().to_owned(),
            },
            place,
            ranked: thousands(i64::try_from(s.ranked).unwrap_or(i64::MAX)),
            href,
        }
    }
}

pub struct ProfileView {
    pub name: String,
    /// The rank card's address (`/u/{uid}/card.png`).
    pub card: String,
    /// Hidden (SPEC 7.3): only its owner sees this page, and its places are where they
    /// would be.
    pub hidden: bool,
    pub places: Vec<PlaceView>,
    /// Every season begun but the current one, the newest first.
    pub seasons: Vec<PlaceView>,
    pub badge: RankBadge,
    pub xp: String,
    pub next: Option<NextRank>,
    pub messages: String,
    pub voice: String,
    pub games_played: String,
    pub games_won: String,
    pub coins: String,
    pub peak: String,
    pub identities: Vec<IdentityView>,
    pub since: Option<String>,
    pub last_active: Option<String>,
    pub chart: Chart,
    /// The chart's best day and total, formatted.
    pub chart_max: String,
    pub chart_total: String,
    pub statement: Option<StatementView>,
}

impl ProfileView {
    pub fn new(rules: &Rules, p: &Profile, xp_days: &[(time::Date, i64)], own: bool) -> Self {
        let next = p.rank.next_xp.map(|to| {
            let from = p.rank.required_xp;
            let span = (to - from).max(1);
            let percent = ((p.xp - from).clamp(0, span) * 100 / span) as u8;
            NextRank {
                badge: badge(rules, p.rank.index.saturating_add(1)),
                missing: thousands(to - p.xp),
                percent,
                from: thousands(from),
                to: thousands(to),
            }
        });
        let today = OffsetDateTime::now_utc().date();
        let chart = xp_chart(xp_days, today, CHART_DAYS);
        Self {
            chart_max: thousands(chart.max),
            card: format!("/u/{}/card.png", p.uid),
            chart_total: thousands(chart.total),
            name: p
                .display_name
                .clone()
                .unwrap_or_else(|| format!("Member #{}", p.uid)),
            badge: badge(rules, p.rank.index),
            hidden: p.hidden,
            places: p
                .standings
                .iter()
                .map(|s| PlaceView::of(s, false))
                .collect(),
            // The season on now is among the places already.
            seasons: p
                .seasons
                .iter()
                .filter(|s| !p.standings.iter().any(|c| c.key == s.key))
                .map(|s| PlaceView::of(s, true))
                .collect(),
            xp: thousands(p.xp),
            next,
            messages: thousands(p.messages),
            voice: duration_words(p.voice_seconds),
            games_played: thousands(p.games_played),
            games_won: thousands(p.games_won),
            coins: thousands(p.coins),
            peak: rules.rank(p.peak_rank).name,
            identities: p
                .identities
                .iter()
                .map(|i| IdentityView {
                    platform: i.platform.clone(),
                    user: own.then(|| i.user.clone()),
                })
                .collect(),
            since: day_of(&p.created_at),
            last_active: day_of(&p.last_active),
            chart,
            statement: None,
        }
    }
}

/// One source's line of the statement: what was done, and the XP it paid.
pub struct SourceLine {
    /// CSS class of its colour (`src-messages`...), shared with the day bars.
    pub class: &'static str,
    pub label: &'static str,
    pub activity: String,
    pub xp: String,
}

/// One day of the statement: a bar of its sources, scaled to the best day.
pub struct DayBar {
    pub day: String,
    pub xp: String,
    /// (CSS class, width in % of the bar track, tooltip).
    pub parts: Vec<(&'static str, u32, String)>,
}

/// The profile's "Where the XP came from" (docs/rules.md, "The XP statement").
pub struct StatementView {
    pub tabs: Vec<Tab>,
    /// "this week (2026-12-07 to 2026-12-13)".
    pub span: String,
    pub total: String,
    pub lines: Vec<SourceLine>,
    /// "38 min in voice while muted: no XP", per reason.
    pub unpaid: Vec<String>,
    /// (platform, XP).
    pub platforms: Vec<(String, String)>,
    /// The newest first.
    pub days: Vec<DayBar>,
}

impl StatementView {
    /// `base`: the page's address, for the period tabs; `season_on`: whether the tab of
    /// the current season is offered.
    pub fn new(s: &Statement, base: &str, season_on: bool) -> Self {
        let tabs = [
            (Period::Week, "This week"),
            (Period::Month, "This month"),
            (Period::Season, "This season"),
            (Period::All, "All time"),
        ]
        .into_iter()
        .filter(|(p, _)| *p != Period::Season || season_on)
        .map(|(p, label)| Tab {
            label,
            href: format!("{base}?xp={}#xp", p.as_str()),
            active: p == s.period,
        })
        .collect();
        let t = &s.total;
        // (class, label, activity, XP, shown): a source with neither activity nor XP is
        // left out.
        let lines = [
            (
                "src-messages",
                "Messages",
                format!("{} messages", thousands(t.messages)),
                t.messages_xp,
                t.messages != 0 || t.messages_xp != 0,
            ),
            (
                "src-voice",
                "Voice",
                format!("{} in voice", duration_words(t.voice_seconds)),
                t.voice_xp,
                t.voice_seconds != 0 || t.voice_xp != 0,
            ),
            (
                "src-games",
                "Games",
                format!("{} played", thousands(t.games_played)),
                t.games_xp,
                t.games_played != 0 || t.games_xp != 0,
            ),
            (
                "src-grants",
                "Given",
                "by moderators and seasons".into(),
                t.grants_xp,
                t.grants_xp != 0,
            ),
            (
                "src-earlier",
                "Earlier",
                "before statements were kept".into(),
                t.unitemised(),
                t.unitemised() != 0,
            ),
        ]
        .into_iter()
        .filter(|line| line.4)
        .map(|(class, label, activity, xp, _)| SourceLine {
            class,
            label,
            activity,
            xp: thousands(xp),
        })
        .collect();
        let parts_of = |d: &Tally| {
            [
                ("src-messages", d.messages_xp, "messages"),
                ("src-voice", d.voice_xp, "voice"),
                ("src-games", d.games_xp, "games"),
                ("src-grants", d.grants_xp, "given"),
                ("src-earlier", d.unitemised(), "earlier"),
            ]
        };
        let best = s
            .days
            .iter()
            .map(|d| parts_of(&d.tally).iter().map(|p| p.1.max(0)).sum::<i64>())
            .max()
            .unwrap_or(0)
            .max(1);
        let days = s
            .days
            .iter()
            .rev()
            .map(|d| DayBar {
                day: d.day.clone(),
                xp: thousands(d.tally.xp),
                parts: parts_of(&d.tally)
                    .into_iter()
                    .filter(|p| p.1 > 0)
                    .map(|(class, xp, what)| {
                        let width = u32::try_from(xp * 100 / best).unwrap_or(100).max(1);
                        (class, width, format!("{} XP from {what}", thousands(xp)))
                    })
                    .collect(),
            })
            .collect();
        Self {
            tabs,
            span: text::statement_span(s),
            total: thousands(t.xp),
            lines,
            unpaid: text::unpaid(t),
            platforms: s
                .platforms
                .iter()
                .map(|p| (text::platform_name(&p.platform), thousands(p.tally.xp)))
                .collect(),
            days,
        }
    }
}

pub struct TelegramWidget {
    pub bot_username: String,
    pub auth_url: String,
}

/// The account-linking part of one's own profile page.
pub struct LinkPanel {
    pub csrf: String,
    pub pending: Option<String>,
    pub discord: bool,
    pub telegram: Option<TelegramWidget>,
    /// Rank-up announcements wanted (SPEC 7.3): the toggle's state.
    pub notify: bool,
    /// Off the leaderboards, profile private (SPEC 7.3): the toggle's state.
    pub hidden: bool,
}

// ---------------------------------------------------------------------------------
// Templates.

#[derive(Template)]
#[template(path = "leaderboard.html")]
struct LeaderboardPage {
    layout: Layout,
    tabs: Vec<Tab>,
    period_phrase: String,
    /// A season's board: its name and days.
    season: Option<String>,
    rows: Vec<Row>,
    page: i64,
    pages: i64,
    total: String,
    prev_href: Option<String>,
    next_href: Option<String>,
}

pub struct Tab {
    label: &'static str,
    href: String,
    active: bool,
}

struct Row {
    position: usize,
    uid: i64,
    name: String,
    badge: RankBadge,
    xp: String,
}

#[derive(Template)]
#[template(path = "seasons.html")]
struct SeasonsPage {
    layout: Layout,
    seasons: Vec<SeasonCard>,
}

struct SeasonCard {
    name: String,
    days: String,
    status: &'static str,
    ranked: String,
    champions: Vec<Row>,
}

#[derive(Template)]
#[template(path = "ranks.html")]
struct RanksPage {
    layout: Layout,
    ranks: Vec<Rung>,
}

struct Rung {
    badge: RankBadge,
    xp: String,
    coins: String,
}

#[derive(Template)]
#[template(path = "profile.html")]
struct ProfilePage {
    layout: Layout,
    title: String,
    refresh: bool,
    /// The link preview's picture (the rank card), absolute, on public profiles.
    og_image: Option<String>,
    profile: Option<ProfileView>,
    /// The signed-in identity, on one's own page.
    me: Option<String>,
    link: Option<LinkPanel>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    discord: bool,
    telegram: Option<TelegramWidget>,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    heading: String,
    message: String,
    back_href: &'static str,
    back_label: &'static str,
}

// ---------------------------------------------------------------------------------
// Rendering.

/// A page with the session cookie (re)stored: every page may clear a one-time message
/// or create the anonymous session that carries the CSRF token.
pub fn respond(
    app: &AppState,
    jar: SignedCookieJar,
    session: &Session,
    status: StatusCode,
    page: impl Template,
) -> Response {
    let jar = session.store(jar, &app.cookies);
    match page.render() {
        Ok(html) => (
            status,
            jar,
            [(header::CACHE_CONTROL, "no-store")],
            Html(html),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

pub fn layout(session: &mut Session) -> Layout {
    Layout {
        who: session
            .who
            .as_ref()
            .map(|w| session.name.clone().unwrap_or_else(|| w.clone())),
        flash: session.take_flash().map(FlashView::from),
    }
}

/// An HTML error page with a message for a person.
pub fn error_page(
    app: &AppState,
    jar: SignedCookieJar,
    mut session: Session,
    status: StatusCode,
    message: impl Into<String>,
) -> Response {
    let signed_in = session.who.is_some();
    let page = ErrorPage {
        layout: layout(&mut session),
        heading: status.canonical_reason().unwrap_or("Error").to_owned(),
        message: message.into(),
        back_href: if signed_in { "/profile" } else { "/login" },
        back_label: if signed_in {
            "Back to your profile"
        } else {
            "Back to sign-in"
        },
    };
    respond(app, jar, &session, status, page)
}

fn database_down(
    app: &AppState,
    jar: SignedCookieJar,
    session: Session,
    e: crate::store::StoreError,
) -> Response {
    tracing::error!(error = %e, "page read failed");
    error_page(
        app,
        jar,
        session,
        StatusCode::SERVICE_UNAVAILABLE,
        "The database is not available right now. Try again in a moment.",
    )
}

/// Any path the site does not have.
pub async fn not_found(State(app): State<AppState>, jar: SignedCookieJar) -> Response {
    let session = app.session(&jar).await;
    error_page(
        &app,
        jar,
        session,
        StatusCode::NOT_FOUND,
        "There is no such page.",
    )
}

pub async fn index() -> Redirect {
    Redirect::to("/leaderboard")
}

pub async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE_CSS,
    )
        .into_response()
}

/// `GET /leaderboard?period=all|week|month&page=N`.
pub async fn leaderboard(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    query: Result<Query<BoardQuery>, QueryRejection>,
) -> Response {
    let mut session = app.session(&jar).await;
    let req = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| q.parse())
    {
        Ok(req) => req,
        Err(message) => return error_page(&app, jar, session, StatusCode::BAD_REQUEST, message),
    };
    if let Err((status, why)) = app.leaderboards_for(&session) {
        return error_page(&app, jar, session, status, why);
    }
    let board = match load_board(&app, &req).await {
        Ok(b) => b,
        Err(e) => return error_page(&app, jar, session, e.status, e.message),
    };
    let season_on = match app.store.seasons().await {
        Ok(seasons) => seasons.at(time::OffsetDateTime::now_utc().date()).is_some(),
        Err(e) => return database_down(&app, jar, session, e),
    };
    let named = req.season.clone();
    let href = |period: Period, page: i64| {
        let mut s = match &named {
            Some(name) if period == Period::Season => format!("/leaderboard?season={name}"),
            _ => format!("/leaderboard?period={}", period.as_str()),
        };
        if page > 1 {
            s.push_str(&format!("&page={page}"));
        }
        if req.per_page != super::api::DEFAULT_PER_PAGE {
            s.push_str(&format!("&per_page={}", req.per_page));
        }
        s
    };
    let page = req.page;
    let period = if board.season.is_some() {
        Period::Season
    } else {
        req.period
    };
    let mut tabs: Vec<Tab> = [
        (Period::All, "All time"),
        (Period::Month, "This month"),
        (Period::Week, "This week"),
        (Period::Season, "This season"),
    ]
    .into_iter()
    .filter(|(p, _)| *p != Period::Season || season_on)
    .map(|(p, label)| Tab {
        label,
        href: format!("/leaderboard?period={}", p.as_str()),
        active: p == period && (p != Period::Season || named.is_none()),
    })
    .collect();
    tabs.push(Tab {
        label: "Seasons",
        href: "/seasons".into(),
        active: false,
    });
    let rules = &app.store.rules;
    let page_view = LeaderboardPage {
        layout: layout(&mut session),
        tabs,
        period_phrase: match (&board.season, named.is_some()) {
            (Some(s), true) => format!("in season {}", s.name),
            _ => period.words().to_owned(),
        },
        season: board
            .season
            .as_ref()
            .map(|s| format!("Season {}: {} to {}", s.name, s.from, s.to)),
        rows: board
            .entries
            .iter()
            .map(|s| Row {
                position: s.position,
                uid: s.uid,
                name: s
                    .display_name
                    .clone()
                    .unwrap_or_else(|| format!("Member #{}", s.uid)),
                badge: badge_by_name(rules, &s.rank),
                xp: thousands(s.xp),
            })
            .collect(),
        page,
        pages: board.pages,
        total: thousands(board.total),
        prev_href: (page > 1).then(|| href(period, page - 1)),
        next_href: (page < board.pages).then(|| href(period, page + 1)),
    };
    respond(&app, jar, &session, StatusCode::OK, page_view)
}

/// `GET /seasons`: the hall of champions, the newest season first.
pub async fn seasons(State(app): State<AppState>, jar: SignedCookieJar) -> Response {
    let mut session = app.session(&jar).await;
    if let Err((status, why)) = app.leaderboards_for(&session) {
        return error_page(&app, jar, session, status, why);
    }
    let today = time::OffsetDateTime::now_utc().date();
    let views = match app.store.season_views(today).await {
        Ok(v) => v,
        Err(e) => return database_down(&app, jar, session, e),
    };
    let rules = &app.store.rules;
    let page = SeasonsPage {
        layout: layout(&mut session),
        seasons: views
            .into_iter()
            .map(|s| SeasonCard {
                days: format!("{} to {}", s.from, s.to),
                status: match s.status.as_str() {
                    "upcoming" => "Upcoming",
                    "on" => "On now",
                    "over" => "Over, closing soon",
                    _ => "Closed",
                },
                ranked: thousands(s.ranked),
                champions: s
                    .champions
                    .iter()
                    .map(|c| Row {
                        position: c.position,
                        uid: c.uid,
                        name: c
                            .display_name
                            .clone()
                            .unwrap_or_else(|| format!("Member #{}", c.uid)),
                        badge: badge_by_name(rules, &c.rank),
                        xp: thousands(c.xp),
                    })
                    .collect(),
                name: s.name,
            })
            .collect(),
    };
    respond(&app, jar, &session, StatusCode::OK, page)
}

/// `GET /ranks`.
pub async fn ranks(State(app): State<AppState>, jar: SignedCookieJar) -> Response {
    let mut session = app.session(&jar).await;
    let rules = &app.store.rules;
    let page = RanksPage {
        layout: layout(&mut session),
        ranks: ladder(rules)
            .into_iter()
            .map(|r| Rung {
                badge: badge(rules, r.index),
                xp: thousands(r.required_xp),
                coins: thousands(r.coins),
            })
            .collect(),
    };
    respond(&app, jar, &session, StatusCode::OK, page)
}

/// `?xp=week|month|season|all`: the period of a profile's statement (this week when
/// absent or not one of those).
#[derive(Debug, Default, serde::Deserialize)]
pub struct StatementQuery {
    pub xp: Option<String>,
}

impl StatementQuery {
    fn period(&self) -> Period {
        self.xp
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(Period::Week)
    }
}

/// The profile page of `p` at `base`, its statement for `period`.
async fn profile_view(
    app: &AppState,
    p: &Profile,
    own: bool,
    base: &str,
    period: Period,
) -> Result<ProfileView, crate::store::StoreError> {
    let today = OffsetDateTime::now_utc().date();
    let from = today - Duration::days(i64::from(CHART_DAYS) - 1);
    let days = app
        .store
        .xp_by_day(p.uid, from, today + Duration::days(1))
        .await?;
    // A season is on when the profile has a place in it.
    let season_on = p.standings.iter().any(|s| s.period == Period::Season);
    // No season on now: this week's instead.
    let period = if period == Period::Season && !season_on {
        Period::Week
    } else {
        period
    };
    let statement = app.store.statement(p.uid, period, None, today).await?;
    let mut view = ProfileView::new(&app.store.rules, p, &days, own);
    view.statement = statement.map(|s| StatementView::new(&s, base, season_on));
    Ok(view)
}

/// `GET /u/{uid}`: anyone's public profile (account ids are not shown).
pub async fn user(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Path(uid): Path<String>,
    xp: Query<StatementQuery>,
) -> Response {
    let mut session = app.session(&jar).await;
    let Ok(uid) = uid.parse::<i64>() else {
        return error_page(
            &app,
            jar,
            session,
            StatusCode::NOT_FOUND,
            "There is no such member.",
        );
    };
    let viewer = session.identity();
    let profile = match app.store.profile_by_uid(uid).await {
        // A hidden member (SPEC 7.3) is no member to anyone but themselves.
        Ok(Some(p)) if p.shown_to(viewer.as_ref()) => p,
        Ok(_) => {
            return error_page(
                &app,
                jar,
                session,
                StatusCode::NOT_FOUND,
                "There is no such member.",
            );
        }
        Err(e) => return database_down(&app, jar, session, e),
    };
    let base = format!("/u/{uid}");
    let view = match profile_view(&app, &profile, false, &base, xp.period()).await {
        Ok(v) => v,
        Err(e) => return database_down(&app, jar, session, e),
    };
    let page = ProfilePage {
        layout: layout(&mut session),
        title: view.name.clone(),
        refresh: false,
        og_image: (!profile.hidden).then(|| format!("{}{}", app.base_url, view.card)),
        profile: Some(view),
        me: None,
        link: None,
    };
    respond(&app, jar, &session, StatusCode::OK, page)
}

/// `GET /u/{uid}/card.png`: the member's rank card (docs/cards.md), as public as their
/// profile; rendered off the async workers, and again only when the card changed.
pub async fn card(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    Path(uid): Path<String>,
) -> Response {
    let session = app.session(&jar).await;
    let not_found = || (StatusCode::NOT_FOUND, "There is no such member.").into_response();
    let Ok(uid) = uid.parse::<i64>() else {
        return not_found();
    };
    let profile = match app.store.profile_by_uid(uid).await {
        Ok(Some(p)) if p.shown_to(session.identity().as_ref()) => p,
        Ok(_) => return not_found(),
        Err(e) => {
            tracing::error!(error = %e, "card read failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "The database is not available.",
            )
                .into_response();
        }
    };
    let (cards, rules) = (app.cards.clone(), app.store.rules.clone());
    match tokio::task::spawn_blocking(move || cards.render(&profile, &rules)).await {
        Ok(Ok(png)) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "public, max-age=60"),
            ],
            png.as_ref().clone(),
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "card not rendered");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "card rendering panicked");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /profile`: one's own merged profile, with account linking.
pub async fn own_profile(
    State(app): State<AppState>,
    jar: SignedCookieJar,
    xp: Query<StatementQuery>,
) -> Response {
    let mut session = app.session(&jar).await;
    let Some(me) = session.identity() else {
        return Redirect::to("/login").into_response();
    };
    let profile = match app.store.profile(&me).await {
        Ok(p) => p,
        Err(e) => return database_down(&app, jar, session, e),
    };
    // A link shows as done once the other identity is part of this profile.
    let mut refresh = false;
    if let Some((other, since)) = session.pending.clone() {
        let joined = profile.as_ref().is_some_and(|p| {
            p.identities
                .iter()
                .any(|i| format!("{}:{}", i.platform, i.user) == other)
        });
        if joined {
            session.pending = None;
            session.flash = Some(Flash::Linked);
        } else if now_ms() - since > PENDING_REFRESH_MS {
            session.pending = None;
            session.flash = Some(Flash::Error {
                message: "The link is taking longer than usual to be applied; it will show up here once it is.".into(),
            });
        } else {
            refresh = true;
        }
    }
    let view = match &profile {
        Some(p) => match profile_view(&app, p, true, "/profile", xp.period()).await {
            Ok(v) => Some(v),
            Err(e) => return database_down(&app, jar, session, e),
        },
        None => None,
    };
    let has = |platform: &str| {
        me.platform.as_str() == platform
            || profile
                .as_ref()
                .is_some_and(|p| p.identities.iter().any(|i| i.platform == platform))
    };
    let link = LinkPanel {
        csrf: session.csrf.clone(),
        pending: session.pending.as_ref().map(|(o, _)| o.clone()),
        discord: app.discord.is_some() && !has("discord"),
        telegram: (!has("telegram"))
            .then(|| app.telegram_widget(&format!("/link/telegram/{}", session.csrf)))
            .flatten(),
        notify: profile.as_ref().is_none_or(|p| p.notify),
        hidden: profile.as_ref().is_some_and(|p| p.hidden),
    };
    let title = view
        .as_ref()
        .map(|v| v.name.clone())
        .or_else(|| session.name.clone())
        .unwrap_or_else(|| "Your profile".into());
    let page = ProfilePage {
        layout: layout(&mut session),
        title,
        refresh,
        og_image: None,
        profile: view,
        me: Some(me.to_string()),
        link: Some(link),
    };
    respond(&app, jar, &session, StatusCode::OK, page)
}

/// `GET /profile/export`: "Download my data", everything held about the signed-in
/// member as one JSON file (docs/privacy.md; the same document as `ttfd export`).
pub async fn export(State(app): State<AppState>, jar: SignedCookieJar) -> Response {
    let session = app.session(&jar).await;
    let Some(me) = session.identity() else {
        return Redirect::to("/login").into_response();
    };
    match crate::privacy::export(&app.store, &app.broker, &me, OffsetDateTime::now_utc()).await {
        Ok(document) => match serde_json::to_vec_pretty(&document) {
            Ok(body) => (
                [
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!(
                            "attachment; filename=\"{}\"",
                            crate::privacy::file_name(&me)
                        ),
                    ),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
                body,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "encoding an export");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        },
        Err(crate::privacy::ExportError::Unknown(_)) => error_page(
            &app,
            jar,
            session,
            StatusCode::NOT_FOUND,
            "Nothing is recorded about you yet.",
        ),
        Err(e) => {
            tracing::error!(error = %e, "building an export");
            error_page(
                &app,
                jar,
                session,
                StatusCode::SERVICE_UNAVAILABLE,
                "Your data cannot be gathered right now. Try again in a moment.",
            )
        }
    }
}

/// `GET /login`.
pub async fn login(State(app): State<AppState>, jar: SignedCookieJar) -> Response {
    let mut session = app.session(&jar).await;
    let page = LoginPage {
        telegram: app.telegram_widget(&format!("/auth/telegram/{}", session.csrf)),
        discord: app.discord.is_some(),
        layout: layout(&mut session),
    };
    respond(&app, jar, &session, StatusCode::OK, page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1_234_567), "-1,234,567");
        assert_eq!(duration_words(59), "0 min");
        assert_eq!(duration_words(3725), "1 h 2 min");
        assert_eq!(duration_words(7200), "2 h");
    }

    #[test]
    fn ranks_have_their_tier_colour() {
        let rules = Rules::default();
        assert_eq!(badge(&rules, 1).colour, "#7f8c8d");
        assert_eq!(badge(&rules, 20).name, "S II");
        assert_eq!(badge(&rules, 20).text, "#1b1b1b");
        assert_eq!(badge_by_name(&rules, "C II").colour, "#2980b9");
    }

    #[test]
    fn templates_escape_what_members_write() {
        let page = ErrorPage {
            layout: Layout {
                who: Some("<b>me</b>".into()),
                flash: None,
            },
            heading: "Bad".into(),
            message: "<script>alert(1)</script>".into(),
            back_href: "/login",
            back_label: "back",
        };
        let html = page.render().expect("renders");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<b>me</b>"));
    }
}
