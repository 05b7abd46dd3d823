-- Standings: every leaderboard as a maintained projection (docs/architecture.md,
-- "Standings"). A period is a key: `all`, `week:2026-W49`, `month:2026-12`, and any
-- period a later feature adds. Ranked members of `all` are every live user; of any
-- other period, the users whose XP in it is not zero.
CREATE TABLE standings (
    period  text COLLATE "C" NOT NULL,
    user_id bigint NOT NULL,
    xp      bigint NOT NULL,
    PRIMARY KEY (period, user_id)
);

-- Leaderboard order: more XP first, ties by the smaller (older) uid. `xp` is included
-- so that counting and paging are index-only scans.
CREATE INDEX standings_order ON standings (period, (-xp), user_id) INCLUDE (xp);

-- Each period's order cut into blocks of about a thousand members, with their counts:
-- a position is the members of the blocks before one's own plus a count inside it, a
-- page starts in the block that holds its first position. A block runs from its start
-- key (inclusive) to the next block's; the first block of a period starts at
-- (-2^63, -2^63), before every key.
CREATE TABLE standing_blocks (
    period    text COLLATE "C" NOT NULL,
    start_neg bigint NOT NULL, -- -xp of the block's first key
    start_uid bigint NOT NULL,
    members   bigint NOT NULL,
    PRIMARY KEY (period, start_neg, start_uid)
);

-- What committed batches changed, for the standings refresher: XP added per user and
-- day, users touched (all-time members even without XP), merges. One row per batch,
-- written under the settle lock, so `id` is commit order; removed by the refresh that
-- applies it, in one transaction. A row with `recompute` asks for every standing to be
-- recomputed from the ledger (written here, for the tables this migration finds).
CREATE TABLE standing_work (
    id        bigserial PRIMARY KEY,
    users     bigint[] NOT NULL DEFAULT '{}',
    days      int4[]   NOT NULL DEFAULT '{}',
    xp        int8[]   NOT NULL DEFAULT '{}',
    touched   bigint[] NOT NULL DEFAULT '{}',
    losers    bigint[] NOT NULL DEFAULT '{}',
    survivors bigint[] NOT NULL DEFAULT '{}',
    recompute boolean  NOT NULL DEFAULT false
);

INSERT INTO standing_work (recompute)
SELECT true WHERE EXISTS (SELECT 1 FROM users);
