//! The minutes of one UTC day in which an identity sent an eligible message: the message
//! XP rule's buckets, kept as a `bit(1440)` on the identity's ledger row for that day
//! (bit `n`, counted from the left as PostgreSQL does, is minute `n` of the day).
//!
//! One row write per identity and day instead of one per identity and minute; a batch
//! sends its minutes as bitmaps and the ledger statement ORs them in, counting the ones
//! already there (`bit_count(batch & stored)`) so that each minute pays once.
//!
//! Multipliers (SPEC 7.2): a minute pays at the largest `data.mult` of its eligible
//! messages. The bitmap holds the minutes that had a message at 100 (the default);
//! [`MinuteMults`], the row's `mults`, the largest other `mult` per minute. Both only
//! grow (a union and a maximum), so what a row holds is a function of the set of its
//! messages, and [`MinuteMults::settle`] says what a batch adds to a row that has or
//! gets any. A row with neither stays on the bitmap statement.

use std::collections::BTreeMap;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};
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

/// The minute of its UTC day that event time `ts_ms` (Unix ms) falls in.
pub fn minute_of_day(ts_ms: i64) -> usize {
    usize::try_from(ts_ms.rem_euclid(DAY_MS) / MINUTE_MS).unwrap_or(0)
}

impl DayMinutes {
    /// Adds the minute of the day that event time `ts_ms` (Unix ms, UTC) falls in.
    pub fn insert_time(&mut self, ts_ms: i64) {
        let minute = minute_of_day(ts_ms);
        self.0[minute / 8] |= 0x80 >> (minute % 8);
    }

    /// Whether minute `minute` of the day is in the set.
    pub fn contains(&self, minute: usize) -> bool {
        minute < PER_DAY && self.0[minute / 8] & (0x80 >> (minute % 8)) != 0
    }

    /// The minutes in either set.
    pub fn union(&self, other: &DayMinutes) -> DayMinutes {
        let mut out = self.clone();
        for (o, b) in out.0.iter_mut().zip(other.0) {
            *o |= b;
        }
        out
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

/// The largest `data.mult` other than 100 per minute of a day, for the minutes that
/// had one (SPEC 7.2). Stored as `bytea`: per minute, ascending, its minute and its
/// mult as two big-endian `u16`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinuteMults(BTreeMap<u16, u16>);

impl MinuteMults {
    /// Raises minute `minute`'s mult to at least `mult`.
    pub fn raise(&mut self, minute: usize, mult: u16) {
        let Ok(minute) = u16::try_from(minute) else {
            return;
        };
        let top = self.0.entry(minute).or_insert(mult);
        *top = (*top).max(mult);
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|(m, x)| m.to_be_bytes().into_iter().chain(x.to_be_bytes()))
            .collect()
    }

    /// Reads the stored form; a trailing odd part (no writer makes one) is left out.
    pub fn from_bytes(bytes: &[u8]) -> MinuteMults {
        MinuteMults(
            bytes
                .chunks_exact(4)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u16::from_be_bytes([c[2], c[3]]),
                    )
                })
                .collect(),
        )
    }

    /// What the minutes of a row (`stored`: its bitmap and mults, if any) and of a batch
    /// (`batch`) pay together, against what the row paid: each minute pays
    /// `message_xp * m / 100` for `m` the largest mult it had, 100 for a bit. Returns
    /// the XP the batch adds and the row's new bitmap and mults.
    pub fn settle(
        message_xp: i64,
        stored: (Option<&DayMinutes>, Option<&MinuteMults>),
        batch: (Option<&DayMinutes>, Option<&MinuteMults>),
    ) -> (i64, Option<DayMinutes>, MinuteMults) {
        let top = |(bits, mults): (Option<&DayMinutes>, Option<&MinuteMults>), minute: usize| {
            let bit = bits.is_some_and(|b| b.contains(minute)).then_some(100);
            let mult = mults
                .and_then(|m| m.0.get(&u16::try_from(minute).ok()?))
                .map(|m| i64::from(*m));
            bit.max(mult)
        };
        let pay = |mult: Option<i64>| mult.map_or(0, |m| message_xp * m / 100);
        let touched = batch.0.into_iter().flat_map(DayMinutes::iter).chain(
            batch
                .1
                .into_iter()
                .flat_map(|m| m.0.keys().map(|k| usize::from(*k))),
        );
        let mut seen = DayMinutes::default();
        let mut gain = 0;
        for minute in touched {
            if seen.contains(minute) {
                continue;
            }
            seen.0[minute / 8] |= 0x80 >> (minute % 8);
            let before = top(stored, minute);
            gain += pay(before.max(top(batch, minute))) - pay(before);
        }
        let bits = match (stored.0, batch.0) {
            (Some(a), Some(b)) => Some(a.union(b)),
            (a, b) => a.or(b).cloned(),
        };
        let mut mults = stored.1.cloned().unwrap_or_default();
        for (minute, mult) in batch.1.into_iter().flat_map(|m| &m.0) {
            mults.raise(usize::from(*minute), *mult);
        }
        (gain, bits, mults)
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

impl Decode<'_, Postgres> for DayMinutes {
    /// Reads the binary form of `bit(1440)`; another length is refused.
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        let bytes = <&[u8] as Decode<Postgres>>::decode(value)?;
        let (len, bits) = bytes
            .split_at_checked(4)
            .ok_or("a bit value is too short")?;
        let mut out = DayMinutes::default();
        if len != i32::try_from(PER_DAY)?.to_be_bytes() || bits.len() != out.0.len() {
            return Err(format!("a ledger row's minutes must be bit({PER_DAY})").into());
        }
        out.0.copy_from_slice(bits);
        Ok(out)
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
    fn mults_survive_their_stored_form() {
        let mut m = MinuteMults::default();
        m.raise(1439, 1000);
        m.raise(0, 0);
        m.raise(7, 50);
        m.raise(7, 40);
        assert_eq!(MinuteMults::from_bytes(&m.to_bytes()), m);
        assert_eq!(m.to_bytes().len(), 12);
    }

    /// SPEC 7.2 on one row: whatever the row held and the batch brings, a minute ends
    /// up paying at its largest mult, and the batch is credited the difference.
    #[test]
    fn a_batch_pays_what_its_minutes_raise() {
        let bits = |ms: &[usize]| {
            let mut d = DayMinutes::default();
            for m in ms {
                d.insert_time(*m as i64 * MINUTE_MS);
            }
            d
        };
        let mults = |ms: &[(usize, u16)]| {
            let mut out = MinuteMults::default();
            for (m, x) in ms {
                out.raise(*m, *x);
            }
            out
        };
        // Stored: minute 1 at 100, minute 2 at 0, minute 3 at 200.
        let (sb, sm) = (bits(&[1]), mults(&[(2, 0), (3, 200)]));
        // Batch: minute 1 at 300 (+20), minute 2 at 100 (+10), minute 3 at 100 (+0),
        // minute 4 at 50 (+5), minute 5 at 0 (+0) and at 100 (+10).
        let (bb, bm) = (bits(&[2, 3, 5]), mults(&[(1, 300), (4, 50), (5, 0)]));
        let (gain, b, m) = MinuteMults::settle(10, (Some(&sb), Some(&sm)), (Some(&bb), Some(&bm)));
        assert_eq!(gain, 20 + 10 + 5 + 10);
        assert_eq!(
            b.as_ref().map(|b| b.iter().collect::<Vec<_>>()),
            Some(vec![1, 2, 3, 5])
        );
        assert_eq!(m, mults(&[(1, 300), (2, 0), (3, 200), (4, 50), (5, 0)]));
        // The same batch again adds nothing.
        let (again, ..) = MinuteMults::settle(10, (b.as_ref(), Some(&m)), (Some(&bb), Some(&bm)));
        assert_eq!(again, 0);
        // A row that did not exist: the batch pays its own largest mults.
        let (fresh, ..) = MinuteMults::settle(10, (None, None), (Some(&bb), Some(&bm)));
        assert_eq!(
            fresh,
            30 + 30 + 5,
            "three bits, minute 1 at 300, minute 4 at 50"
        );
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
