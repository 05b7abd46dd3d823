-- The XP statement (docs/rules.md, "The XP statement"): each ledger row keeps what its
-- XP is made of, by source, and the voice time that paid nothing, by reason (kind
-- `voice_unpaid`). The four sources add up to `xp` on rows applied from now on; rows
-- applied before keep 0 in each, and their XP shows as not itemised until `ttfd rebuild`
-- itemises it from the stream. Constant defaults: no table rewrite.
ALTER TABLE xp_ledger
    ADD COLUMN xp_messages     bigint NOT NULL DEFAULT 0,
    ADD COLUMN xp_voice        bigint NOT NULL DEFAULT 0,
    ADD COLUMN xp_games        bigint NOT NULL DEFAULT 0,
    ADD COLUMN xp_grants       bigint NOT NULL DEFAULT 0,
    ADD COLUMN unpaid_afk      bigint NOT NULL DEFAULT 0,
    ADD COLUMN unpaid_deafened bigint NOT NULL DEFAULT 0,
    ADD COLUMN unpaid_muted    bigint NOT NULL DEFAULT 0,
    ADD COLUMN unpaid_alone    bigint NOT NULL DEFAULT 0;
