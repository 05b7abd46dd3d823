-- Faster batch apply (docs/architecture.md, "Performance").

-- Event ids compare byte by byte: the cheapest comparison, and the same order on every
-- machine whatever the database's locale.
ALTER TABLE processed_events ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE links ALTER COLUMN event_id TYPE text COLLATE "C";

-- No index covers the ledger's xp any more, so adding to a day updates the row in place
-- (a HOT update: no index entries to write). Users with a negative day, who need the
-- slow peak recomputation, are found by a flag on their identities instead.
DROP INDEX xp_ledger_negative;
DROP INDEX xp_ledger_by_day;
CREATE INDEX xp_ledger_by_day ON xp_ledger (day);
ALTER TABLE xp_ledger SET (fillfactor = 80);

-- Set once a day of this identity's ledger went below zero; never cleared (a stale
-- flag only sends a user down the slow, always correct, path).
ALTER TABLE identities ADD COLUMN ledger_dipped boolean NOT NULL DEFAULT false;
UPDATE identities SET ledger_dipped = true
WHERE id IN (SELECT identity_id FROM xp_ledger WHERE xp < 0);
