-- SPEC 7.2, multipliers: a minute pays at the largest `data.mult` of its eligible
-- messages. `minutes` keeps the minutes that had a message at 100 (the default);
-- `mults` the largest other mult per minute, for the minutes that had one: per
-- minute, ascending, the minute of the day and the mult as two big-endian uint16
-- (workers/src/store/minutes.rs). NULL while the day had none.
ALTER TABLE xp_ledger ADD COLUMN mults bytea;

-- SPEC 7.1, the audit log: every `xp` event (XP given or taken by hand, by moderators
-- and operators) and every link an operator made (proof `admin`), applied from the
-- events like the other projections, so that replays and rebuilds keep it.
CREATE TABLE audit (
    event_id    text   PRIMARY KEY,
    ts_ms       bigint NOT NULL,
    kind        text   NOT NULL, -- 'xp' or 'link'
    identity_id bigint NOT NULL, -- the member the change was about
    other_id    bigint,          -- a link's other identity
    amount      integer,         -- an xp event's amount
    reason      text,
    by_platform text,            -- data.by, when the event said
    by_user     text
);

CREATE INDEX audit_newest ON audit (ts_ms DESC, event_id DESC);
CREATE INDEX audit_of_identity ON audit (identity_id, ts_ms DESC);
CREATE INDEX audit_of_other ON audit (other_id, ts_ms DESC) WHERE other_id IS NOT NULL;
CREATE INDEX audit_by ON audit (by_platform, by_user, ts_ms DESC);
