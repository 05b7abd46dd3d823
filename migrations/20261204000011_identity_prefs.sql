-- SPEC 7.3, preferences: per identity and field, the value of the newest `prefs` event
-- that set it (by ts, ties by the larger event id), with that event's ts and id. A
-- unified user is hidden when any of its identities is, and notified unless one of them
-- said notify = false.
CREATE TABLE identity_prefs (
    identity_id  bigint PRIMARY KEY,
    hidden       boolean,
    hidden_ms    bigint,
    hidden_event text COLLATE "C",
    notify       boolean,
    notify_ms    bigint,
    notify_event text COLLATE "C"
);
