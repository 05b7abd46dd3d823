-- One-time proofs a sign-in consumed (docs/security.md): a Telegram Login `hash`, an
-- OAuth `state`. Kept until the proof would be refused by age anyway, and shared by
-- every web replica, so a replayed proof is refused wherever it arrives.
CREATE TABLE spent_tokens (
    kind       text   NOT NULL,
    token      text   COLLATE "C" NOT NULL,
    expires_ms bigint NOT NULL,
    PRIMARY KEY (kind, token)
);

CREATE INDEX spent_tokens_expiry ON spent_tokens (expires_ms);
