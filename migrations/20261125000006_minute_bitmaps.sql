-- The message XP rule's minutes move onto the ledger row of their day (docs/architecture.md,
-- "Performance"): a bit(1440) whose bit n, from the left, is minute n of the UTC day.
-- A batch writes one row per identity and day instead of one per identity and minute.
-- NULL: no eligible message that day.
ALTER TABLE xp_ledger ADD COLUMN minutes bit(1440);

-- What the row's last write added to xp (the day's XP plus message XP for its minutes
-- that were new): the apply path's upsert computes it from the row it locked and reads
-- it back, as RETURNING shows only the new row in PostgreSQL 15.
ALTER TABLE xp_ledger ADD COLUMN added bigint NOT NULL DEFAULT 0;

-- Each day's minutes from message_buckets (minute = Unix minute; days are floor
-- divisions, as the apply path's). A day with minutes but no ledger row yet (message XP
-- configured 0) gets a row with 0 XP.
INSERT INTO xp_ledger AS l (identity_id, day, xp, minutes)
SELECT identity_id, DATE '1970-01-01' + floor(minute / 1440.0)::int, 0,
       bit_or(set_bit(repeat('0', 1440)::bit(1440), (minute - 1440 * floor(minute / 1440.0))::int, 1))
FROM message_buckets
GROUP BY 1, 2
ON CONFLICT (identity_id, day) DO UPDATE SET minutes = excluded.minutes;

DROP TABLE message_buckets;
