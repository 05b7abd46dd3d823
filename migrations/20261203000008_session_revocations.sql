-- "Sign out everywhere" (docs/security.md): a member's sessions signed in at or before
-- `revoked_ms` no longer count, on every web replica. Sessions themselves stay in the
-- signed cookie; this is the one server-side fact that can end them.
CREATE TABLE session_revocations (
    identity   text   COLLATE "C" PRIMARY KEY,
    revoked_ms bigint NOT NULL
);
