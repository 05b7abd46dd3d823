//! Synthetic community activity for the demo and the benchmark: people with accounts on
//! Discord, Telegram and the website, who chat, sit in voice, play games, receive grants
//! and now and then link their accounts.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ttfd_shared::wire::{EventId, Proof};
use ttfd_shared::{Event, Identity, Payload, Unpaid};

const NAMES: [&str; 16] = [
    "Aiko", "Boris", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kira",
    "Lev", "Mira", "Nikolai", "Olga", "Pavel",
];
const GAMES: [&str; 4] = ["quiz", "chess", "trivia", "wordle"];

/// A generator of plausible events over `people` persons.
pub struct Traffic {
    people: u64,
    rng: StdRng,
    run: String,
    n: u64,
}

impl Traffic {
    /// `run` makes ids unique per run (ids must be deterministic per fact, and each run
    /// invents new facts).
    pub fn new(people: u64, seed: u64, run: &str) -> Self {
        Self {
            people: people.max(2),
            rng: StdRng::seed_from_u64(seed),
            run: run.to_owned(),
            n: 0,
        }
    }

    fn identity(person: u64, platform: &str) -> Identity {
        let user = match platform {
            "discord" => format!("{}", 300_000_000_000_000_000u64 + person),
            "telegram" => format!("{}", 500_000_000 + person),
            _ => format!("member{person}@example.org"),
        };
        Identity::new(platform, &user).expect("generated identities are valid")
    }

    /// A person, skewed so that a few are very active (as in any community).
    fn person(&mut self) -> u64 {
        let x: f64 = self.rng.random();
        ((x * x * x) * self.people as f64) as u64 % self.people
    }

    /// The next event, at event time `ts` (Unix ms).
    pub fn next(&mut self, ts: i64) -> Event {
        self.n += 1;
        let person = self.person();
        let platform = match self.rng.random_range(0..100) {
            0..50 => "discord",
            50..85 => "telegram",
            _ => "website",
        };
        let identity = Self::identity(person, platform);
        let roll = self.rng.random_range(0..1000);
        let payload = match roll {
            0..760 => Payload::Message {
                len: Some(self.rng.random_range(1..240)),
                chat: None,
                mult: None,
            },
            // Voice time that paid nothing, as only the Discord worker reports it.
            840..880 if platform == "discord" => Payload::VoiceUnpaid {
                seconds: self.rng.random_range(15..600),
                why: Unpaid::ALL[self.rng.random_range(0..Unpaid::ALL.len())],
                channel: None,
            },
            760..880 => Payload::Voice {
                seconds: if self.rng.random_bool(0.8) {
                    60
                } else {
                    self.rng.random_range(1..600)
                },
                channel: None,
                mult: None,
            },
            880..950 => Payload::Game {
                game: GAMES[self.rng.random_range(0..GAMES.len())].into(),
                won: self.rng.random_bool(0.4),
                xp: self.rng.random_range(10..200),
            },
            950..985 => Payload::Xp {
                amount: if self.rng.random_bool(0.1) {
                    -self.rng.random_range(10..100)
                } else {
                    self.rng.random_range(50..500)
                },
                reason: "event reward".into(),
                by: None,
            },
            _ => {
                let other = if platform == "telegram" {
                    "discord"
                } else {
                    "telegram"
                };
                Payload::Link {
                    other: Self::identity(person, other),
                    proof: if platform == "website" {
                        Proof::Oauth
                    } else {
                        Proof::Code
                    },
                    by: None,
                }
            }
        };
        let name = format!("{} {}", NAMES[(person % 16) as usize], person);
        Event {
            id: EventId::parse(&format!("{}:{}:{}", self.run, payload.kind(), self.n))
                .expect("generated ids are valid"),
            ts,
            identity,
            name: Some(name),
            payload,
        }
    }
}
