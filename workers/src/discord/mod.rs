//! `ttfd discord`: the Discord bot role.

pub mod mapping;
pub mod settings;

pub use settings::DiscordSettings;
