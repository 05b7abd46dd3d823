-- Standings keyed by a period's number (docs/architecture.md, "Standings"). The
-- refresher writes every active member's row in every current period each round; with
-- a text key in both indexes and in the round's join, a row cost about a third more
-- than with a four-byte number (24,000 rows a round: about 300 against 210 ms on the
-- 2-core machine). A period is still a key: `standing_periods` numbers them, and every
-- read names the key.
CREATE TABLE standing_periods (
    id  int4 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text COLLATE "C" NOT NULL UNIQUE
);

-- Standings are a projection: the tables are made anew and recomputed from the users
-- and the ledger, as after the migration that added them (the recompute row also
-- takes the place of the work queued before).
DROP TABLE standings;
DROP TABLE standing_blocks;

-- `period`: a `standing_periods` id. Rows are written only by the refresher, which
-- numbers the keys it writes first (no foreign key: its check would cost every insert).
CREATE TABLE standings (
    period  int4   NOT NULL,
    user_id bigint NOT NULL,
    xp      bigint NOT NULL,
    hidden  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (period, user_id)
);
CREATE INDEX standings_order ON standings (period, (-xp), user_id) INCLUDE (xp)
    WHERE NOT hidden;

CREATE TABLE standing_blocks (
    period    int4   NOT NULL,
    start_neg bigint NOT NULL,
    start_uid bigint NOT NULL,
    members   bigint NOT NULL,
    PRIMARY KEY (period, start_neg, start_uid)
);

INSERT INTO standing_work (recompute)
SELECT true WHERE EXISTS (SELECT 1 FROM users);
