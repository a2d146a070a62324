-- Issue 7: an issuance dirties fewer B-tree pages. With group commit every page a batch
-- touches is one 4 KiB write to the WAL (and, once the tables outgrow the cache, a read),
-- so each index whose key is random costs a page per row. Task ids are now time-ordered
-- (src/task/mod.rs), so the task-keyed indexes grow at their right edge; this migration
-- removes or narrows the random-keyed structures.
-- Append-only: never edit this file once it has landed; add a new one.

-- used_tokens: one tree keyed by (issuer, token_hash) instead of a rowid table plus an
-- index for its primary key.
CREATE TABLE used_tokens_v2 (
    issuer      TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (issuer, token_hash)
) WITHOUT ROWID;
INSERT INTO used_tokens_v2 (issuer, token_hash, expires_at)
    SELECT issuer, token_hash, expires_at FROM used_tokens;
DROP TABLE used_tokens;
ALTER TABLE used_tokens_v2 RENAME TO used_tokens;
CREATE INDEX used_tokens_expires_at ON used_tokens (expires_at);

-- audit_events without the UNIQUE index on `hash`: a record's hash covers its seq and the
-- previous hash, so the chain itself (checked by `writ admin audit verify`) is what makes
-- records unique and ordered; the index only scattered one random page per record.
-- DROP TABLE does not fire the no-delete trigger; both triggers and the other indexes are
-- recreated exactly as before.
CREATE TABLE audit_events_v2 (
    seq              INTEGER NOT NULL PRIMARY KEY,
    time             TEXT    NOT NULL,
    event            TEXT    NOT NULL,
    outcome          TEXT    NOT NULL,
    issuer           TEXT,
    subject          TEXT,
    policy           TEXT,
    task_id          TEXT,
    serial           TEXT,
    key_fingerprint  TEXT,
    logins           TEXT    NOT NULL,
    hosts            TEXT    NOT NULL,
    host             TEXT,
    ca_fingerprint   TEXT,
    source_ip        TEXT,
    reason           TEXT,
    request_id       TEXT,
    prev_hash        TEXT    NOT NULL,
    hash             TEXT    NOT NULL
);
INSERT INTO audit_events_v2 SELECT * FROM audit_events ORDER BY seq;
DROP TABLE audit_events;
ALTER TABLE audit_events_v2 RENAME TO audit_events;
CREATE INDEX audit_events_task_id ON audit_events (task_id);
CREATE INDEX audit_events_time ON audit_events (time);
-- Trails follow certificates by serial only for records that name no task (refusals about
-- a serial writ could not attribute); every other record is found by its task id, so the
-- random-keyed serial index holds just those.
CREATE INDEX audit_events_serial_without_task ON audit_events (serial) WHERE task_id IS NULL;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (SELECT 1 FROM audit_prune_marker WHERE OLD.seq < before_seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: old records are removed only by writ admin audit prune');
END;
