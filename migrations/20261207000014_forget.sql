-- SPEC 7.4, `forget` (erasure): what the system keeps to honour a cut, and no more.

-- Per forgotten identity, the SHA-256 of `platform:user` and the newest cut: the apply
-- path drops every later-delivered event of it (and link or unlink naming it) up to the
-- cut. Kept across rebuilds and in snapshots (docs/privacy.md).
CREATE TABLE forgotten (
    identity_hash bytea  PRIMARY KEY,
    cut_ms        bigint NOT NULL
);

-- Erasures whose streams are still to be cleaned and whose later events are still to
-- be applied again (a worker beside the sync consumers, `privacy::erase_pending`); a
-- row holds the identity only until then.
CREATE TABLE erasure_work (
    event_id    text COLLATE "C" PRIMARY KEY,
    platform    text   NOT NULL,
    external_id text   NOT NULL,
    cut_ms      bigint NOT NULL
);

-- Users a batch left without any identity: off every period's standings.
ALTER TABLE standing_work ADD COLUMN gone bigint[] NOT NULL DEFAULT '{}';

-- Sequences of the events stream's messages an erasure deleted: gaps a rebuild expects
-- (it refuses a stream that lost messages any other way). Numbers only.
CREATE TABLE erased_sequences (seq bigint PRIMARY KEY);
