//! Rank cards (docs/cards.md): rendered for several ranks and names and saved under
//! `<target>/test-output/cards/` for a person to look at; served by the website.

use std::path::{Path, PathBuf};

use ttfd::shared::Rules;
use ttfd::shared::view::{Period, PeriodStanding, Profile};
use ttfd::shared::wire::WireIdentity;

fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-output/cards");
    std::fs::create_dir_all(&dir).expect("create the test output directory");
    dir
}

fn profile(rules: &Rules, name: Option<&str>, xp: i64, platforms: &[&str]) -> Profile {
    let identities = platforms
        .iter()
        .map(|p| WireIdentity {
            platform: (*p).into(),
            user: "1".into(),
        })
        .collect();
    Profile {
        standings: [
            (Period::All, "all", Some(1_234)),
            (Period::Week, "week:2026-W50", Some(7)),
        ]
        .into_iter()
        .map(|(period, key, position)| PeriodStanding {
            period,
            key: key.into(),
            position,
            xp: 100,
            ranked: 56_789,
        })
        .collect(),
        ..Profile::with_xp(rules, 42, name.map(str::to_owned), xp, identities)
    }
}

/// The PNG's width and height, from its IHDR chunk.
fn size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}

#[test]
fn cards_render_every_rank_and_name_and_are_saved_for_a_look() {
    let rules = Rules::default();
    let cases = [
        ("f1-plain", Some("Ada"), 0, &["discord"][..]),
        (
            "c2-linked",
            Some("Nelly"),
            17_000,
            &["discord", "telegram", "website"][..],
        ),
        (
            "s2-top",
            Some("Сергей Кузнецов"),
            10_000_000,
            &["telegram"][..],
        ),
        (
            "long-name",
            Some("An extraordinarily long display name that never ends"),
            4_200,
            &["website"][..],
        ),
        ("emoji", Some("🔥 Blaze 🔥"), 950, &["discord"][..]),
        ("markup", Some("<script>&\"'"), 120, &["discord"][..]),
        ("no-name", None, 60_000, &["discord", "telegram"][..]),
    ];
    let cards = ttfd::card::Cards::default();
    for (file, name, xp, platforms) in cases {
        let p = profile(&rules, name, xp, platforms);
        let svg = ttfd::card::svg(&p, &rules);
        assert!(!svg.contains("<script>"), "text is escaped: {svg}");
        let png = cards.render(&p, &rules).expect("renders");
        assert_eq!(size(&png), (ttfd::card::WIDTH, ttfd::card::HEIGHT));
        let again = cards.render(&p, &rules).expect("renders");
        assert!(
            std::sync::Arc::ptr_eq(&png, &again),
            "the same card comes from the cache"
        );
        let path = output_dir().join(format!("{file}.png"));
        std::fs::write(&path, png.as_slice()).expect("write the card");
        std::fs::write(path.with_extension("svg"), svg).expect("write the svg");
        eprintln!("card: {}", path.display());
    }
}
