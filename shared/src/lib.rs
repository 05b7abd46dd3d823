//! TTFD Unified's shared domain: identities, the event wire format and the XP, rank and
//! merge rules, as pure code with no I/O.
//!
//! This crate is the contract of `SPEC.md` in Rust. Platform workers use it to build
//! events, the sync consumers to validate and apply them, and the tests use
//! [`model::fold`] as the reference answer for "the state is a pure function of the set
//! of distinct events".

#[cfg(feature = "arbitrary")]
pub mod arbitrary;
pub mod identity;
pub mod model;
pub mod rules;
pub mod seasons;
pub mod trust;
pub mod view;
pub mod voice;
pub mod wire;

pub use identity::{Identity, Platform, PlatformUser};
pub use rules::{Rank, RankDef, Rules};
pub use wire::{Event, EventId, Payload, Proof, Rejection, Unpaid};
