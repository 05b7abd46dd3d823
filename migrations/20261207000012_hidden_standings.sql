-- SPEC 7.3, hidden members: off every public leaderboard, the others closing up. A
-- hidden member keeps their standings rows (their XP in each period stays exact, and
-- they still see where they would stand), flagged `hidden`: the order index, the
-- block counts, pages and positions see only the rows that are not.
ALTER TABLE standings ADD COLUMN hidden boolean NOT NULL DEFAULT false;
DROP INDEX standings_order;
CREATE INDEX standings_order ON standings (period, (-xp), user_id) INCLUDE (xp)
    WHERE NOT hidden;

-- Users whose visibility a batch may have changed (a `prefs` event of one of their
-- identities): the refresher sets their rows' flag in every period.
ALTER TABLE standing_work ADD COLUMN seen bigint[] NOT NULL DEFAULT '{}';

-- The hidden identities, read by every refresh round: few, found without a scan.
CREATE INDEX identity_prefs_hidden ON identity_prefs (identity_id) WHERE hidden;

-- Users hidden before this migration are taken off the standings the way a rebuild
-- does it: every standing recomputed.
INSERT INTO standing_work (recompute)
SELECT true WHERE EXISTS (SELECT 1 FROM identity_prefs WHERE hidden);
