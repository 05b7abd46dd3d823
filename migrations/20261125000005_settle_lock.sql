-- Batches take the settle lock (docs/architecture.md, "Concurrency") for their short
-- second phase; what can stay out of it moves out of the rows that phase writes.

-- Display names get a table of their own, written after a batch commits (newest
-- (event ms, event id) wins, so writing one again changes nothing): the rows every batch
-- touches under the settle lock no longer carry them.
CREATE TABLE identity_names (
    identity_id bigint PRIMARY KEY,
    name        text   NOT NULL,
    name_ms     bigint NOT NULL,
    name_event  text COLLATE "C" NOT NULL
) WITH (fillfactor = 70);

INSERT INTO identity_names (identity_id, name, name_ms, name_event)
SELECT id, name, name_ms, name_event FROM identities
WHERE name IS NOT NULL AND name_ms IS NOT NULL AND name_event IS NOT NULL;

-- Whether a day of any of the user's identities ever went below zero, which sends the
-- peak rank down the slow path: on the user row the batch reads anyway.
ALTER TABLE users ADD COLUMN ledger_dipped boolean NOT NULL DEFAULT false;

UPDATE users u SET ledger_dipped = true
WHERE EXISTS (SELECT 1 FROM identities i WHERE i.user_id = u.id AND i.ledger_dipped);

ALTER TABLE identities
    DROP COLUMN name,
    DROP COLUMN name_ms,
    DROP COLUMN name_event,
    DROP COLUMN ledger_dipped;
