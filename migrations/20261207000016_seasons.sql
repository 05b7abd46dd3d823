-- Seasons (docs/seasons.md): named spans of days with leaderboards of their own, the
-- standings key `season:<name>`; nothing is reset.

-- The seasons in force, as the sync role's `[[seasons]]` settings say: a replica that
-- starts with a different list writes it here under the standings refresh lock and
-- asks for the standings to be recomputed, so every replica's refresher counts the same
-- seasons. Never overlapping (the settings refuse it).
CREATE TABLE seasons (
    name      text COLLATE "C" PRIMARY KEY,
    first_day date NOT NULL,
    last_day  date NOT NULL,
    CHECK (first_day <= last_day)
);

-- A season's closing: once its last day is over (and the grace for late events), one
-- replica takes its champions from the committed standings, in the transaction that
-- writes this row and the announcement's outbox row. The primary key makes a second
-- closing (another replica, a restart) a no-op.
CREATE TABLE season_closings (
    season    text COLLATE "C" PRIMARY KEY,
    closed_at timestamptz NOT NULL DEFAULT now(),
    -- how many members the season ranked when it closed
    ranked    bigint NOT NULL
);

-- Its champions, positions 1..N, as they stood at the closing (ties by the smaller uid,
-- as everywhere). A merge later moves nothing here: readers follow `merged_into`.
CREATE TABLE season_champions (
    season   text COLLATE "C" NOT NULL REFERENCES season_closings ON DELETE CASCADE,
    position int    NOT NULL,
    user_id  bigint NOT NULL,
    xp       bigint NOT NULL,
    PRIMARY KEY (season, position)
);
CREATE INDEX season_champions_user ON season_champions (user_id);
