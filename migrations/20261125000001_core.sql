-- TTFD Unified core schema: unified users, identities, the facts derived from events,
-- the idempotency record and the notification outbox. See docs/architecture.md.

-- A unified user. Totals are kept here so that reads are single-row; they are always
-- the sums over the user's identities (buckets and ledger live per identity).
CREATE TABLE users (
    id             bigserial PRIMARY KEY,
    -- Set when this user was merged into another one: the row is then only a redirect.
    merged_into    bigint REFERENCES users (id),
    xp             bigint   NOT NULL DEFAULT 0,
    -- Highest rank held, in event time (docs/rules.md); coins derive from it.
    peak_rank      smallint NOT NULL DEFAULT 1,
    messages       bigint   NOT NULL DEFAULT 0,
    voice_seconds  bigint   NOT NULL DEFAULT 0,
    games_played   bigint   NOT NULL DEFAULT 0,
    games_won      bigint   NOT NULL DEFAULT 0,
    -- Event time (Unix ms) of the user's first and newest event.
    first_event_ms bigint,
    last_event_ms  bigint
) WITH (fillfactor = 70); -- room for HOT updates: rows are rewritten on every event

-- The all-time leaderboard.
CREATE INDEX users_leaderboard ON users (xp DESC, id) WHERE merged_into IS NULL;

-- One account on one platform. Every identity belongs to exactly one live user.
CREATE TABLE identities (
    id          bigserial PRIMARY KEY,
    platform    text   NOT NULL,
    external_id text   NOT NULL,
    user_id     bigint NOT NULL REFERENCES users (id),
    -- Display name from the newest named event, by (event ms, event id).
    name        text,
    name_ms     bigint,
    name_event  text COLLATE "C",
    UNIQUE (platform, external_id)
) WITH (fillfactor = 70);

CREATE INDEX identities_user ON identities (user_id);

-- UTC minutes in which an identity sent an eligible message: the message XP rule.
CREATE TABLE message_buckets (
    identity_id bigint NOT NULL,
    minute      bigint NOT NULL,
    PRIMARY KEY (identity_id, minute)
);

-- XP per identity per UTC day of the events' time: period leaderboards and peak rank.
CREATE TABLE xp_ledger (
    identity_id bigint NOT NULL,
    day         date   NOT NULL,
    xp          bigint NOT NULL,
    PRIMARY KEY (identity_id, day)
);

CREATE INDEX xp_ledger_by_day ON xp_ledger (day) INCLUDE (identity_id, xp);
-- Users with a negative day need the slow peak recomputation; find them fast.
CREATE INDEX xp_ledger_negative ON xp_ledger (identity_id) WHERE xp < 0;

-- Every applied link, with its event day: peak rank replays merges in event time.
CREATE TABLE links (
    event_id   text   PRIMARY KEY,
    identity_a bigint NOT NULL,
    identity_b bigint NOT NULL,
    day        date   NOT NULL,
    proof      text   NOT NULL
);

CREATE INDEX links_a ON links (identity_a);

-- The idempotency record: ids of applied events (and of dead-lettered stream messages).
-- Pruned only once the events stream can no longer redeliver them (its max_age).
CREATE TABLE processed_events (
    id         text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX processed_events_applied ON processed_events USING brin (applied_at);

-- Notifications committed with the change they describe, published by the relay.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    body       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Rejected events, counted once per stream message.
CREATE TABLE dead_letters (
    platform text        NOT NULL,
    kind     text        NOT NULL,
    code     text        NOT NULL,
    count    bigint      NOT NULL,
    last_at  timestamptz NOT NULL,
    PRIMARY KEY (platform, kind, code)
);

-- Stream sequences of dead-lettered messages already counted (kept apart from event
-- ids, which are the publishers' to choose).
CREATE TABLE dead_lettered_messages (
    stream_seq bigint      PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now()
);
