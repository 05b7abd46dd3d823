//! The minutes of one UTC day in which an identity sent an eligible message: the message
//! XP rule's buckets, kept as a `bit(1440)` on the identity's ledger row for that day
//! (bit `n`, counted from the left as PostgreSQL does, is minute `n` of the day).
//!
//! One row write per identity and day instead of one per identity and minute; a batch
//! sends its minutes as bitmaps and the ledger statement ORs them in, counting the ones
//! already there (`bit_count(batch & stored)`) so that each minute pays once.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo};
use sqlx::{Encode, Postgres, Type};
use ttfd_shared::rules::{DAY_MS, MINUTE_MS};

/// Minutes in a day: the bitmap's length.
pub const PER_DAY: usize = (DAY_MS / MINUTE_MS) as usize;

/// PostgreSQL's `bit` and `bit[]` type oids (stable, from `pg_type.dat`).
const BIT: Oid = Oid(1560);
const BIT_ARRAY: Oid = Oid(1561);

/// A set of minutes of one day.
#[derive(Clone, PartialEq, Eq)]
pub struct DayMinutes([u8; PER_DAY / 8]);

impl Default for DayMinutes {
    fn default() -> Self {
        Self([0; PER_DAY / 8])
    }
}

impl std::fmt::Debug for DayMinutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl DayMinutes {
    /// Adds the minute of the day that event time `ts_ms` (Unix ms, UTC) falls in.
    pub fn insert_time(&mut self, ts_ms: i64) {
        let minute = usize::try_from(ts_ms.rem_euclid(DAY_MS) / MINUTE_MS).unwrap_or(0);
        self.0[minute / 8] |= 0x80 >> (minute % 8);
    }

    /// How many minutes are in the set.
    pub fn len(&self) -> i64 {
        self.0.iter().map(|b| i64::from(b.count_ones())).sum()
    }

    /// Whether no minute is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    /// The minutes of the day in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..PER_DAY).filter(|m| self.0[m / 8] & (0x80 >> (m % 8)) != 0)
    }
}

impl Type<Postgres> for DayMinutes {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(BIT)
    }
}

impl PgHasArrayType for DayMinutes {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(BIT_ARRAY)
    }
}

impl Encode<'_, Postgres> for DayMinutes {
    /// The binary form of `bit(n)`: the length in bits, then the bits, leftmost first.
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend(i32::try_from(PER_DAY)?.to_be_bytes());
        buf.extend(self.0);
        Ok(IsNull::No)
    }

    fn size_hint(&self) -> usize {
        4 + self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_is_its_place_in_the_utc_day() {
        let mut m = DayMinutes::default();
        let day = 20_000 * DAY_MS;
        m.insert_time(day);
        m.insert_time(day + 59_999);
        m.insert_time(day + 9 * MINUTE_MS + 1);
        m.insert_time(day + DAY_MS - 1);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![0, 9, 1439]);
        assert_eq!(m.len(), 3);
        assert_eq!(m.0[0], 0x80);
        assert_eq!(m.0[1], 0x40);
        assert_eq!(m.0[179], 0x01);
    }

    #[test]
    fn times_before_1970_fall_in_their_own_day() {
        let mut m = DayMinutes::default();
        m.insert_time(-1);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![1439]);
        assert!(!m.is_empty());
        assert!(DayMinutes::default().is_empty());
    }
}
