-- How long the last standings refresh round that found work took (its transaction up to
-- its last write, on the database's clock): under load, the replicas space rounds as
-- widely as the two-second promise allows, from the length of the last one
-- (docs/architecture.md, "Standings").
ALTER TABLE standings_clock ADD COLUMN took interval NOT NULL DEFAULT '0';
