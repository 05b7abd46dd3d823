-- The standings refresher's cost on the write path (docs/architecture.md, "Standings").

-- When the last standings refresh round that found work began, on the database's clock:
-- replicas take turns at one round per `sync.standings_refresh_ms` between them, not
-- one each (docs/architecture.md, "Standings"). One row, written by the round under the
-- refresh lock; no row: no round yet.
CREATE TABLE standings_clock (
    one boolean     PRIMARY KEY DEFAULT true CHECK (one),
    at  timestamptz NOT NULL
);

-- A batch writes its work row under the settle lock, which serializes the batches of
-- every replica: its arrays (often thousands of entries, stored out of line) are
-- compressed with lz4, several times faster than the default pglz (about 0.6 against
-- 2.4 ms for a batch's row); a server built without lz4 stores them uncompressed.
DO $$
BEGIN
    ALTER TABLE standing_work
        ALTER COLUMN users SET COMPRESSION lz4, ALTER COLUMN days SET COMPRESSION lz4,
        ALTER COLUMN xp SET COMPRESSION lz4, ALTER COLUMN touched SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    ALTER TABLE standing_work
        ALTER COLUMN users SET STORAGE EXTERNAL, ALTER COLUMN days SET STORAGE EXTERNAL,
        ALTER COLUMN xp SET STORAGE EXTERNAL, ALTER COLUMN touched SET STORAGE EXTERNAL;
END $$;
