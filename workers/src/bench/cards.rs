//! `ttfd bench cards`: how long a rank card takes (docs/cards.md), rendered anew and
//! from the cache, with the SVG alone as the baseline of the same run. Needs no
//! database: the profiles are made up, with names of every kind the cards meet.

use std::time::{Duration, Instant};

use ttfd_shared::Rules;
use ttfd_shared::view::{Period, PeriodStanding, Profile};
use ttfd_shared::wire::WireIdentity;

use crate::card::{self, Cards};

#[derive(Debug, Clone, clap::Args)]
pub struct CardsArgs {
    /// Cards rendered per measurement.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
}

const NAMES: [&str; 5] = [
    "Ada",
    "Сергей Кузнецов",
    "An extraordinarily long display name that never ends",
    "🔥 Blaze 🔥",
    "Ωmega <&> \"quotes\"",
];

/// Profile `n`: a name of [`NAMES`], XP climbing the ladder, positions and platforms.
fn profile(rules: &Rules, n: usize) -> Profile {
    let xp = (n as i64 * 7_919) % 2_000_000;
    let identities = ["discord", "telegram", "website"][..1 + n % 3]
        .iter()
        .map(|p| WireIdentity {
            platform: (*p).into(),
            user: n.to_string(),
        })
        .collect();
    Profile {
        standings: [Period::All, Period::Week]
            .into_iter()
            .map(|period| PeriodStanding {
                period,
                key: period.as_str().into(),
                position: Some(1 + n as u64),
                xp,
                ranked: 1_000_000,
            })
            .collect(),
        ..Profile::with_xp(
            rules,
            n as i64,
            Some(format!("{} {n}", NAMES[n % NAMES.len()])),
            xp,
            identities,
        )
    }
}

/// p50 and p99 in ms of `f` over `samples` runs.
fn measure(
    samples: usize,
    mut f: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let mut times: Vec<Duration> = Vec::with_capacity(samples);
    for i in 0..samples.max(1) {
        let t = Instant::now();
        f(i)?;
        times.push(t.elapsed());
    }
    Ok(super::percentiles(times))
}

pub fn run(args: CardsArgs) -> anyhow::Result<()> {
    let rules = Rules::default();
    let profiles: Vec<Profile> = (0..args.samples).map(|n| profile(&rules, n)).collect();
    // The fonts load on the first card: not part of any measurement.
    card::png(&card::svg(&profiles[0], &rules))?;
    let svg = measure(args.samples, |i| {
        std::hint::black_box(card::svg(&profiles[i], &rules));
        Ok(())
    })?;
    let cards = Cards::default();
    let fresh = measure(args.samples, |i| {
        cards.render(&profiles[i], &rules)?;
        Ok(())
    })?;
    let cached = measure(args.samples, |i| {
        cards.render(&profiles[i], &rules)?;
        Ok(())
    })?;
    println!(
        "TTFD bench cards: {} cards of {}x{} px, 1 core",
        args.samples,
        card::WIDTH,
        card::HEIGHT
    );
    println!("{:<40} {:>16}", "p50 / p99, ms", "");
    for (what, (p50, p99)) in [
        ("baseline: the SVG alone", svg),
        ("rendered to PNG (first view)", fresh),
        ("from the cache (card unchanged)", cached),
    ] {
        println!("{what:<40} {p50:>7.3} / {p99:>7.3}");
    }
    Ok(())
}
