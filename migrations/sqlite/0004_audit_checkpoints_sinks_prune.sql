-- The audit log's bookkeeping (see src/audit/): signed checkpoints, per-sink delivery
-- positions, and a guard that lets records be deleted only by `writ admin audit prune`.
-- Append-only: never edit this file once it has landed; add a new one.

-- Signed statements "record seq has hash", by the CA key (SSHSIG, namespace
-- audit-checkpoint@writ.dev). Also written outside the database (the checkpoint file),
-- so cutting records off the end of the log is detectable.
CREATE TABLE audit_checkpoints (
    seq             INTEGER NOT NULL PRIMARY KEY,
    hash            TEXT    NOT NULL,
    time            TEXT    NOT NULL,
    ca_fingerprint  TEXT    NOT NULL,
    signature       TEXT    NOT NULL
);

-- The last record each configured [[audit.sink]] delivered, so a restarted sink resumes
-- exactly after it.
CREATE TABLE audit_sink_positions (
    sink        TEXT    NOT NULL PRIMARY KEY,
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    updated_at  TEXT    NOT NULL
);

-- Set by `writ admin audit prune` inside its own transaction (and removed before it
-- commits): records before before_seq may be deleted while it exists. Nothing else can
-- delete a record without first dropping the trigger below — which an attacker with
-- write access to the file can do, and which signed checkpoints and sinks then expose.
CREATE TABLE audit_prune_marker (
    id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    before_seq  INTEGER NOT NULL
);

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (SELECT 1 FROM audit_prune_marker WHERE OLD.seq < before_seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: old records are removed only by writ admin audit prune');
END;

-- Export and prune by time.
CREATE INDEX audit_events_time ON audit_events (time);
-- Trails follow certificates by serial too.
CREATE INDEX audit_events_serial ON audit_events (serial);
