-- PostgreSQL roles per process kind (docs/security.md, "Database roles"): each role of
-- ttfd gets only the tables it uses, so a leaked web or query credential cannot rewrite
-- XP or the idempotency records. Run as the database owner (the migration Job's user)
-- after every `ttfd migrate`, in the ttfd database:
--
--   psql "$OWNER_URL" -f k8s/postgres-roles.sql
--
-- It creates the group roles if they are missing and grants again (idempotent). Then
-- give each process kind a login of its own, e.g.
--
--   CREATE ROLE ttfd_web_login LOGIN PASSWORD '...' IN ROLE ttfd_web;
--
-- and put it in that kind's database.url (the Secret keys database-url-sync, ...;
-- docs/operations.md). The migration Job, `ttfd rebuild`, `ttfd replay` and
-- `ttfd import` keep the owner. The bots hold no database credential at all.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ttfd_sync') THEN
    CREATE ROLE ttfd_sync NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ttfd_query') THEN
    CREATE ROLE ttfd_query NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ttfd_web') THEN
    CREATE ROLE ttfd_web NOLOGIN;
  END IF;
EXCEPTION WHEN unique_violation THEN
  NULL; -- another session created them at the same moment
END
$$;

GRANT USAGE ON SCHEMA public TO ttfd_sync, ttfd_query, ttfd_web;

-- The sync consumers: the whole apply path, the outbox relay, dead letters, pruning,
-- the standings refresher.
GRANT SELECT, INSERT, UPDATE, DELETE ON
    users, identities, identity_names, xp_ledger, links, processed_events, outbox,
    dead_letters, dead_lettered_messages, standings, standing_blocks, standing_periods, standing_work,
    standings_clock,
    audit, identity_prefs,
    unlinks, owner_epoch, forgotten, erasure_work, erased_sequences,
    seasons, season_closings, season_champions
  TO ttfd_sync;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ttfd_sync;

-- What everyone may read: profiles and leaderboards; the audit log (the web role
-- shows it to admins only, the query service to moderators' tools).
GRANT SELECT ON users, identities, identity_names, xp_ledger, links, standings, standing_blocks,
    standing_periods,
    audit, identity_prefs, seasons, season_closings, season_champions
  TO ttfd_query, ttfd_web;

-- Link codes (the query service for the bots, the web role for the site): issuing,
-- redeeming, the attempt limits, and the redeemed link's event into the outbox.
GRANT SELECT, INSERT, UPDATE, DELETE ON link_codes, link_code_failures TO ttfd_query, ttfd_web;
GRANT INSERT ON outbox TO ttfd_query, ttfd_web;
GRANT USAGE, SELECT ON SEQUENCE outbox_id_seq TO ttfd_query, ttfd_web;

-- The web role alone: spent sign-in proofs and "sign out everywhere".
GRANT SELECT, INSERT, UPDATE, DELETE ON spent_tokens TO ttfd_web;
GRANT SELECT, INSERT, UPDATE ON session_revocations TO ttfd_web;
