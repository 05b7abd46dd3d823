-- One-time link codes (SPEC 1: links are proven; docs/architecture.md, "Link codes").
-- A code is issued to one identity and redeemed by another, once, within its lifetime.
CREATE TABLE link_codes (
    code            text COLLATE "C" PRIMARY KEY,
    platform        text   NOT NULL,
    external_id     text   NOT NULL,
    issued_ms       bigint NOT NULL,
    expires_ms      bigint NOT NULL,
    -- The redeeming identity ("platform:user") once used: a code is used at most once.
    redeemed_by     text,
    redeemed_ms     bigint
);

CREATE INDEX link_codes_issuer ON link_codes (platform, external_id);
CREATE INDEX link_codes_expiry ON link_codes (expires_ms);

-- Failed redemptions per redeeming identity in a sliding window: the attempt limit.
CREATE TABLE link_code_failures (
    platform        text   NOT NULL,
    external_id     text   NOT NULL,
    window_start_ms bigint NOT NULL,
    failures        int    NOT NULL,
    PRIMARY KEY (platform, external_id)
);
