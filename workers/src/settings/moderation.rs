//! `[moderation]`: the guard rails of the moderators' XP tools (docs/moderation.md):
//! `moderation.max_amount`, `moderation.actions_per_hour`.

use serde::Deserialize;

use super::{SettingsError, invalid};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModerationSettings {
    /// The largest XP one adjustment may move, either way (at most 1,000,000, the
    /// wire's limit for `data.amount`).
    pub max_amount: u32,
    /// How many adjustments one moderator may make in an hour of event time.
    pub actions_per_hour: u32,
}

impl Default for ModerationSettings {
    fn default() -> Self {
        Self {
            max_amount: 10_000,
            actions_per_hour: 30,
        }
    }
}

impl ModerationSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(1..=1_000_000).contains(&self.max_amount) {
            return Err(invalid("moderation.max_amount", "must be 1..=1000000"));
        }
        if self.actions_per_hour == 0 {
            return Err(invalid("moderation.actions_per_hour", "must be at least 1"));
        }
        Ok(())
    }
}
