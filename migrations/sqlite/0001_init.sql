-- writ schema, first version. Migrations are append-only: never edit this file once it
-- has landed; add a new one.

-- CA keys. private_key is the OpenSSH private key format, encrypted with the CA
-- passphrase (bcrypt-pbkdf + aes256-ctr); it is never stored in clear.
CREATE TABLE ca_keys (
    id            TEXT    NOT NULL PRIMARY KEY,
    algorithm     TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('next', 'active', 'retiring', 'retired', 'revoked')),
    fingerprint   TEXT    NOT NULL UNIQUE,
    public_key    TEXT    NOT NULL,
    private_key   TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    activated_at  INTEGER,
    retired_at    INTEGER
);
-- Exactly one key signs.
CREATE UNIQUE INDEX ca_keys_one_active ON ca_keys (state) WHERE state = 'active';

-- Tasks: the unit of access. logins and hosts are JSON arrays.
CREATE TABLE tasks (
    id          TEXT    NOT NULL PRIMARY KEY,
    issuer      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    policy      TEXT    NOT NULL,
    logins      TEXT    NOT NULL,
    hosts       TEXT    NOT NULL,
    purpose     TEXT    NOT NULL DEFAULT '',
    state       TEXT    NOT NULL CHECK (state IN ('active', 'completed', 'revoked')),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    end_reason  TEXT
);
CREATE INDEX tasks_expires_at ON tasks (expires_at);

-- Issued certificates. Serials are random, non-zero, 63-bit, unique.
CREATE TABLE certificates (
    serial           INTEGER NOT NULL PRIMARY KEY CHECK (serial > 0),
    task_id          TEXT    NOT NULL REFERENCES tasks (id),
    ca_key_id        TEXT    NOT NULL REFERENCES ca_keys (id),
    key_fingerprint  TEXT    NOT NULL,
    principals       TEXT    NOT NULL,
    valid_after      INTEGER NOT NULL,
    valid_before     INTEGER NOT NULL,
    issued_at        INTEGER NOT NULL,
    revoked_at       INTEGER
);
CREATE INDEX certificates_task_id ON certificates (task_id);
CREATE INDEX certificates_valid_before ON certificates (valid_before);

-- The audit log: append-only, hash-chained (see src/audit.rs).
CREATE TABLE audit_events (
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
    hash             TEXT    NOT NULL UNIQUE
);
CREATE INDEX audit_events_task_id ON audit_events (task_id);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
