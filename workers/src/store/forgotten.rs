//! SPEC 7.4, erasure: the identities forgotten, each by the SHA-256 of `platform:user`
//! with its newest cut (table `forgotten`), and the rule the apply path drops events by.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use ttfd_shared::{Event, Identity, Payload};

/// The forgotten identities as one batch sees them: the stored cuts (read at owner epoch
/// `epoch`) and the batch's own `forget` events.
#[derive(Debug, Clone, Default)]
pub struct Forgotten {
    /// The owner epoch the stored cuts were read at: every forget moves it.
    pub epoch: i64,
    stored: HashMap<[u8; 32], i64>,
}

/// What the table keeps of an identity: SHA-256 of `platform:user`.
pub fn hash(identity: &Identity) -> [u8; 32] {
    Sha256::digest(format!(
        "{}:{}",
        identity.platform.as_str(),
        identity.user.as_str()
    ))
    .into()
}

impl Forgotten {
    pub fn new(epoch: i64, rows: impl IntoIterator<Item = (Vec<u8>, i64)>) -> Self {
        Self {
            epoch,
            stored: rows
                .into_iter()
                .filter_map(|(h, cut)| Some((<[u8; 32]>::try_from(h.as_slice()).ok()?, cut)))
                .collect(),
        }
    }
}

/// The cuts of a batch with the stored ones looked up as needed.
#[derive(Debug, Clone)]
pub struct BatchCuts<'f> {
    batch: HashMap<Identity, i64>,
    stored: Option<&'f HashMap<[u8; 32], i64>>,
}

impl<'f> BatchCuts<'f> {
    pub fn new(forgotten: &'f Forgotten, events: &[&Event]) -> Self {
        let mut batch = HashMap::new();
        for e in events {
            if let Payload::Forget { .. } = e.payload {
                let cut: &mut i64 = batch.entry(e.identity.clone()).or_insert(e.ts);
                *cut = (*cut).max(e.ts);
            }
        }
        Self {
            batch,
            stored: (!forgotten.stored.is_empty()).then_some(&forgotten.stored),
        }
    }

    /// The newest cut of `identity`, stored or in the batch.
    pub fn cut(&self, identity: &Identity) -> Option<i64> {
        let stored = self.stored.and_then(|s| s.get(&hash(identity)).copied());
        match (stored, self.batch.get(identity).copied()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether nothing is forgotten (the common case: no hashing at all).
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.stored.is_none()
    }

    /// Whether `e` is erased: an event of a forgotten identity, or a link or unlink
    /// naming one, up to its cut (a `forget` itself included).
    pub fn erases(&self, e: &Event) -> bool {
        if self.is_empty() {
            return false;
        }
        let cut_of = |i: &Identity| self.cut(i).is_some_and(|cut| e.ts <= cut);
        cut_of(&e.identity) || e.payload.other().is_some_and(cut_of)
    }

    /// Whether `e` is an event of a forgotten identity up to its cut, whose name is
    /// erased too (a link's name is its sender's).
    pub fn erases_own(&self, e: &Event) -> bool {
        !self.is_empty() && self.cut(&e.identity).is_some_and(|cut| e.ts <= cut)
    }

    /// The batch's forgets: each identity with its newest cut.
    pub fn batch(&self) -> &HashMap<Identity, i64> {
        &self.batch
    }
}
