-- SPEC 7.4, `unlink`: a link can be taken back, so a user can split. A user's totals
-- are then recomputed from its identities, which therefore keep their own.

-- Each identity's counters and activity times per day, of its events other than links
-- (a link's time is on its `links` row, and counts only while the link does), on the
-- ledger row the batch writes anyway. A user's are the sums, minima and maxima over its
-- identities' rows and its links that count.
ALTER TABLE xp_ledger
    ADD COLUMN messages      bigint NOT NULL DEFAULT 0,
    ADD COLUMN voice_seconds bigint NOT NULL DEFAULT 0,
    ADD COLUMN games_played  bigint NOT NULL DEFAULT 0,
    ADD COLUMN games_won     bigint NOT NULL DEFAULT 0,
    ADD COLUMN first_ms      bigint,
    ADD COLUMN last_ms       bigint;

-- Before this migration only users kept counters: each user's go to its identity with
-- the smallest id, on the day of its newest event (exact for users of one identity;
-- `ttfd rebuild` makes every identity's exact, docs/rules.md).
INSERT INTO xp_ledger AS l (identity_id, day, xp, messages, voice_seconds, games_played,
                            games_won, first_ms, last_ms)
SELECT i.id, (TIMESTAMP 'epoch' + u.last_event_ms * INTERVAL '1 millisecond')::date, 0,
       u.messages, u.voice_seconds, u.games_played, u.games_won, u.first_event_ms,
       u.last_event_ms
FROM users u JOIN identities i ON i.user_id = u.id
WHERE u.merged_into IS NULL AND u.last_event_ms IS NOT NULL
  AND i.id = (SELECT min(j.id) FROM identities j WHERE j.user_id = u.id)
ON CONFLICT (identity_id, day) DO UPDATE
SET messages = excluded.messages, voice_seconds = excluded.voice_seconds,
    games_played = excluded.games_played, games_won = excluded.games_won,
    first_ms = excluded.first_ms, last_ms = excluded.last_ms;

-- A link's event time, and whether an unlink took it back. Links recorded before this
-- migration are taken at the start of their day.
ALTER TABLE links
    ADD COLUMN ts_ms    bigint,
    ADD COLUMN excluded boolean NOT NULL DEFAULT false;
UPDATE links SET ts_ms = (day - DATE '1970-01-01')::int8 * 86400000;
ALTER TABLE links ALTER COLUMN ts_ms SET NOT NULL;
CREATE INDEX links_b ON links (identity_b);

-- Every applied unlink: the pair (the smaller identity id first) and its cut.
CREATE TABLE unlinks (
    event_id   text COLLATE "C" PRIMARY KEY,
    identity_a bigint NOT NULL,
    identity_b bigint NOT NULL,
    cut_ms     bigint NOT NULL,
    CHECK (identity_a < identity_b)
);
CREATE INDEX unlinks_pair ON unlinks (identity_a, identity_b, cut_ms);

-- Bumped by every batch that moves an identity to another live user (a split): the
-- replicas' owner caches read it with the settle lock and start over when it moved.
CREATE TABLE owner_epoch (n bigint NOT NULL);
INSERT INTO owner_epoch VALUES (0);
