//! Rank cards (docs/cards.md): a member's rank as a picture, rendered from an SVG
//! template with resvg and the DejaVu Sans fonts shipped in `workers/assets/fonts`
//! (Latin, Cyrillic, Greek and many symbols; licence beside them). The same card on the
//! website (`/u/{uid}/card.png`, the profile's Open Graph image) and in the bots.
//!
//! Rendering is pure: the SVG is a function of the profile, and the PNG of the SVG, so
//! [`Cards`] keeps recent PNGs by the SVG's hash and renders a profile again only when
//! something on its card changed.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg::{self, fontdb};
use ttfd_shared::Rules;
use ttfd_shared::view::text::{self, thousands};
use ttfd_shared::view::{Profile, badge};

/// The card's size in pixels (a 3:1 banner, sharp on high-density screens at 400 px).
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 320;
/// The longest name shown whole; longer ones are cut with an ellipsis.
const NAME_CHARS: usize = 22;
/// PNGs kept by [`Cards`] before it starts over.
const CACHE_ENTRIES: usize = 1024;

static REGULAR: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static BOLD: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-Bold.ttf");
static FONTS: OnceLock<Arc<fontdb::Database>> = OnceLock::new();
static COVERAGE: OnceLock<Option<ttf_parser::Face<'static>>> = OnceLock::new();

/// The shipped fonts, loaded once.
fn fonts() -> Arc<fontdb::Database> {
    FONTS
        .get_or_init(|| {
            let mut db = fontdb::Database::new();
            db.load_font_data(REGULAR.to_vec());
            db.load_font_data(BOLD.to_vec());
            db.set_sans_serif_family("DejaVu Sans");
            Arc::new(db)
        })
        .clone()
}

/// `s` without the characters the fonts have no glyph for (emoji, most scripts beyond
/// Latin, Greek and Cyrillic), which would show as empty boxes; runs of spaces left
/// behind become one.
fn drawable(s: &str) -> String {
    let face = COVERAGE.get_or_init(|| ttf_parser::Face::parse(BOLD, 0).ok());
    let kept: String = s
        .chars()
        .filter(|c| c.is_whitespace() || face.as_ref().is_none_or(|f| f.glyph_index(*c).is_some()))
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A card that could not be rendered (a bug in the template: never the member's input,
/// which is escaped).
#[derive(Debug, thiserror::Error)]
#[error("rank card: {0}")]
pub struct CardError(String);

/// The SVG of `p`'s card.
pub fn svg(p: &Profile, rules: &Rules) -> String {
    let b = badge(rules, p.rank.index);
    let name = p
        .display_name
        .as_deref()
        .map(drawable)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("Member #{}", p.uid));
    let initial = name
        .chars()
        .find(|c| c.is_alphanumeric())
        .map_or_else(|| "#".to_owned(), |c| c.to_uppercase().collect());
    let shown: String = if name.chars().count() > NAME_CHARS {
        name.chars().take(NAME_CHARS - 1).chain(['…']).collect()
    } else {
        name.clone()
    };
    let (progress, next_line) = match p.rank.next_xp {
        Some(next_xp) => {
            let next = rules.rank(p.rank.index.saturating_add(1));
            let span = (next_xp - p.rank.required_xp).max(1) as f64;
            let done = ((p.xp - p.rank.required_xp).max(0) as f64 / span).clamp(0.0, 1.0);
            (
                done,
                format!("{} XP to {}", thousands(next_xp - p.xp), next.name),
            )
        }
        None => (1.0, "Top rank".to_owned()),
    };
    let place = |key: &str| {
        p.standings
            .iter()
            .find(|s| s.period.as_str() == key)
            .and_then(|s| s.position)
            .map_or_else(|| "—".to_owned(), |n| format!("#{}", thousands(n as i64)))
    };
    let mut platforms: Vec<String> = p
        .identities
        .iter()
        .map(|i| match i.platform.as_str() {
            "website" => "Website".to_owned(),
            other => text::platform_name(other),
        })
        .collect();
    platforms.sort();
    platforms.dedup();
    // No bar at all at the very start of a rank (a rect of width 0 is invalid SVG).
    let bar = match 560.0 * progress {
        w if w >= 1.0 => {
            format!(r#"<rect x="290" y="186" width="{w:.1}" height="18" rx="9" fill="url(#bar)"/>"#)
        }
        _ => String::new(),
    };
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">
<defs>
  <linearGradient id="bg" x1="0" y1="0" x2="1" y2="1">
    <stop offset="0" stop-color="#1b1f2a"/><stop offset="1" stop-color="#11131a"/>
  </linearGradient>
  <linearGradient id="bar" x1="0" y1="0" x2="1" y2="0">
    <stop offset="0" stop-color="#5865f2"/><stop offset="1" stop-color="#8f9bff"/>
  </linearGradient>
</defs>
<clipPath id="edge"><rect width="{WIDTH}" height="{HEIGHT}" rx="28"/></clipPath>
<g clip-path="url(#edge)">
  <rect width="{WIDTH}" height="{HEIGHT}" fill="url(#bg)"/>
  <rect width="14" height="{HEIGHT}" fill="{colour}"/>
</g>
<circle cx="150" cy="160" r="96" fill="{colour}"/>
<text x="150" y="192" font-family="DejaVu Sans" font-weight="bold" font-size="92" fill="{ink}" text-anchor="middle">{initial}</text>
<text x="290" y="92" font-family="DejaVu Sans" font-weight="bold" font-size="44" fill="#f2f3f5">{name}</text>
<rect x="290" y="116" width="{badge_w}" height="44" rx="22" fill="{colour}"/>
<text x="{badge_x}" y="147" font-family="DejaVu Sans" font-weight="bold" font-size="24" fill="{ink}" text-anchor="middle">{rank}</text>
<text x="{xp_x}" y="148" font-family="DejaVu Sans" font-size="30" fill="#f2f3f5">{xp} <tspan fill="#9aa0aa" font-size="22">XP</tspan></text>
<rect x="290" y="186" width="560" height="18" rx="9" fill="#0b0c10"/>
{bar}
<text x="290" y="236" font-family="DejaVu Sans" font-size="22" fill="#c9ccd3">{next}</text>
<text x="850" y="236" font-family="DejaVu Sans" font-size="22" fill="#c9ccd3" text-anchor="end">{week} this week · {all} all time</text>
<text x="290" y="282" font-family="DejaVu Sans" font-size="20" fill="#9aa0aa">{platforms}</text>
<text x="{right}" y="282" font-family="DejaVu Sans" font-weight="bold" font-size="20" fill="#5865f2" text-anchor="end">TTFD</text>
</svg>"##,
        colour = b.colour,
        ink = b.text,
        initial = escape(&initial),
        name = escape(&shown),
        badge_w = badge_width(&b.name),
        badge_x = 290 + badge_width(&b.name) / 2,
        rank = escape(&b.name),
        xp_x = 290 + badge_width(&b.name) + 24,
        xp = thousands(p.xp),
        next = escape(&next_line),
        week = place("week"),
        all = place("all"),
        platforms = escape(&platforms.join(" · ")),
        right = WIDTH - 40,
    )
}

/// The badge's width for a rank name (DejaVu Sans Bold at 24 px: about 17 px a letter).
fn badge_width(name: &str) -> u32 {
    40 + 17 * u32::try_from(name.chars().count()).unwrap_or(8)
}

/// `s` as SVG text.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            // Characters XML cannot hold at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The PNG of an SVG card.
pub fn png(svg: &str) -> Result<Vec<u8>, CardError> {
    let options = usvg::Options {
        fontdb: fonts(),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| CardError(e.to_string()))?;
    let mut pixmap = Pixmap::new(WIDTH, HEIGHT).ok_or_else(|| CardError("no pixmap".to_owned()))?;
    resvg::render(&tree, Transform::identity(), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| CardError(e.to_string()))
}

/// `p`'s card as PNG, rendered on tokio's blocking pool (the bots' `/rank`); `None`,
/// logged, when it cannot be: the text says it all.
pub async fn png_off_thread(p: &Profile, rules: &Rules) -> Option<Vec<u8>> {
    let (p, rules) = (p.clone(), rules.clone());
    match tokio::task::spawn_blocking(move || png(&svg(&p, &rules))).await {
        Ok(Ok(png)) => Some(png),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "rank card not rendered");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "rank card rendering panicked");
            None
        }
    }
}

/// Rendered cards by their SVG, shared by a process's requests.
#[derive(Clone, Default)]
pub struct Cards {
    cache: Arc<Mutex<HashMap<u64, Arc<Vec<u8>>>>>,
}

impl Cards {
    /// `p`'s card as PNG, from the cache when its SVG was rendered before.
    pub fn render(&self, p: &Profile, rules: &Rules) -> Result<Arc<Vec<u8>>, CardError> {
        let svg = svg(p, rules);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        svg.hash(&mut h);
        let key = h.finish();
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(hit);
        }
        let png = Arc::new(png(&svg)?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, png.clone());
        }
        Ok(png)
    }
}
