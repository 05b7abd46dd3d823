-- Users are rewritten by nearly every batch; without an index on xp, those rewrites
-- are HOT updates (no index entries written). The all-time leaderboard sorts the live
-- users instead (a top-N sort: a few milliseconds for tens of thousands of users).
DROP INDEX users_leaderboard;
