//! XP rate controls (docs/moderation.md, "XP rates"): `[[boosts]]` (timed, by event
//! time, for every platform or some), `discord.xp_rates.{channels, categories, roles}`
//! and `telegram.chat_rates`. Each is a percentage 0..=1000 (0: no XP, 200: double);
//! the platform workers turn them into `data.mult` (SPEC 7.2) when they publish.

use std::collections::BTreeMap;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use ttfd_shared::wire::MAX_MULT;

use super::{SettingsError, invalid};
use crate::rates::{Boost, Rates};

/// One `[[boosts]]` entry: `mult` for events with `from <= ts < to`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoostSettings {
    #[serde(default)]
    pub name: String,
    /// RFC 3339, e.g. `2026-12-05T00:00:00Z`.
    pub from: String,
    pub to: String,
    pub mult: u16,
    /// The platforms it applies to; empty: every platform.
    #[serde(default)]
    pub platforms: Vec<String>,
}

/// `[discord.xp_rates]`: by channel, by category (for the channels not listed), by
/// role (the largest of the member's listed roles).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordRates {
    pub channels: BTreeMap<String, u16>,
    pub categories: BTreeMap<String, u16>,
    pub roles: BTreeMap<String, u16>,
}

fn mult_in(key: &str, mult: u16) -> Result<u16, SettingsError> {
    if mult > MAX_MULT {
        return Err(invalid(
            key,
            format!("{mult} must be 0..={MAX_MULT} (a percentage)"),
        ));
    }
    Ok(mult)
}

/// The ids and rates of one map, each id a number (`section` names the map's key).
pub fn id_rates<T: std::str::FromStr + Ord>(
    section: &str,
    map: &BTreeMap<String, u16>,
) -> Result<BTreeMap<T, u16>, SettingsError> {
    map.iter()
        .map(|(id, mult)| {
            let key = format!("{section}.{id}");
            let parsed = id
                .trim()
                .parse::<T>()
                .map_err(|_| invalid(&key, "must be a numeric id"))?;
            Ok((parsed, mult_in(&key, *mult)?))
        })
        .collect()
}

impl DiscordRates {
    pub fn rates(&self) -> Result<Rates<u64>, SettingsError> {
        Ok(Rates {
            places: id_rates("discord.xp_rates.channels", &self.channels)?,
            groups: id_rates("discord.xp_rates.categories", &self.categories)?,
            roles: id_rates("discord.xp_rates.roles", &self.roles)?,
        })
    }
}

/// The boosts of `[[boosts]]`, checked (times, order, range), naming the entry.
pub fn boosts(settings: &[BoostSettings]) -> Result<Vec<Boost>, SettingsError> {
    let ms = |key: &str, s: &str| {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .map_err(|e| {
                invalid(
                    key,
                    format!("{s:?} is not an RFC 3339 time such as 2026-12-05T00:00:00Z: {e}"),
                )
            })
    };
    settings
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let key = |k: &str| format!("boosts[{i}].{k}");
            let (from_ms, to_ms) = (ms(&key("from"), &b.from)?, ms(&key("to"), &b.to)?);
            if to_ms <= from_ms {
                return Err(invalid(&key("to"), "must be after `from`"));
            }
            Ok(Boost {
                from_ms,
                to_ms,
                mult: mult_in(&key("mult"), b.mult)?,
                platforms: b.platforms.clone(),
            })
        })
        .collect()
}
