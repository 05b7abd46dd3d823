//! The wire contract of SPEC section 4: subjects, the MessagePack event envelope and
//! the notifications.
//!
//! [`decode`] is the one gate every event passes: it returns a valid [`Event`] or a
//! [`Rejection`] whose code and detail go to the dead-letter stream.

mod envelope;
mod json;
pub mod notify;
mod subjects;

pub use envelope::{
    Event, EventId, MAX_EVENT_BYTES, MAX_MULT, Payload, Proof, Unpaid, clean_name, decode, encode,
};
pub use json::{JsonEventError, from_json};
pub use notify::{LinkNotice, RankNotice, SeasonChampion, SeasonNotice, WireIdentity};
pub use subjects::Subjects;

/// Why an event was refused. `code` is a short stable category (counted per platform and
/// kind); `detail` says exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Rejection {
    pub code: &'static str,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}
