-- writ schema for PostgreSQL, first version: the schema that migrations/sqlite/0001 to
-- 0011 build, written at once with PostgreSQL's types (BIGINT Unix seconds, TEXT, TEXT[]
-- for lists, BOOLEAN), for several `writ serve` replicas sharing one database.
-- Append-only: never edit this file once it has landed; add a new one.
--
-- Everything that must be unique or ordered is the database's to enforce, because
-- several processes write: serials (primary key), consumed tokens (primary key, taken
-- with INSERT … ON CONFLICT DO NOTHING), one `active` and one `next` CA key (partial
-- unique indexes), audit sequence numbers (primary key). The audit chain is appended
-- under a transaction-scoped advisory lock (src/store/postgres/chain.rs), so the primary
-- key on `seq` is a backstop that turns a would-be fork into a failed transaction.
--
-- Not here, on purpose: `used_tokens_before_0006` (SQLite keeps tokens consumed before
-- its migration 0006 under their old key; a PostgreSQL database never had them), and the
-- SQLite trigger `certificates_signing_key_usable` (0003, dropped in 0007): the writer
-- checks the signing key's state under a row lock in the issuance's transaction.

-- CA keys. private_key is the OpenSSH private key format, encrypted with the CA
-- passphrase (bcrypt-pbkdf + aes256-ctr); it is never stored in clear, and it is erased
-- ('') when the key is retired or revoked.
CREATE TABLE ca_keys (
    id              TEXT    NOT NULL PRIMARY KEY,
    algorithm       TEXT    NOT NULL,
    state           TEXT    NOT NULL
                    CHECK (state IN ('next', 'active', 'retiring', 'retired', 'revoked')),
    fingerprint     TEXT    NOT NULL UNIQUE,
    public_key      TEXT    NOT NULL,
    private_key     TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    activated_at    BIGINT,
    retired_at      BIGINT,
    -- When the key left `active` (became `retiring`, or `revoked` while active).
    deactivated_at  BIGINT,
    -- When the key was revoked (emergency removal from trust).
    revoked_at      BIGINT
);
-- Exactly one key signs, and at most one waits to sign.
CREATE UNIQUE INDEX ca_keys_one_active ON ca_keys (state) WHERE state = 'active';
CREATE UNIQUE INDEX ca_keys_one_next ON ca_keys (state) WHERE state = 'next';

-- Rotation schedule set by `writ admin ca schedule --every …`; at most one row.
CREATE TABLE ca_rotation_schedule (
    id             SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    every_seconds  BIGINT   NOT NULL CHECK (every_seconds > 0),
    set_at         BIGINT   NOT NULL
);

-- Tasks: the unit of access. Ids are time-ordered hex (src/task/mod.rs), compared
-- bytewise ("C") so the feed lists them in the order SQLite does.
-- `extensions` is NULL only for a task that recorded no restrictions (SQLite: opened
-- before its migration 0009); writ always records them here.
CREATE TABLE tasks (
    id              TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    issuer          TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    policy          TEXT    NOT NULL,
    logins          TEXT[]  NOT NULL,
    hosts           TEXT[]  NOT NULL,
    purpose         TEXT    NOT NULL DEFAULT '',
    state           TEXT    NOT NULL CHECK (state IN ('active', 'completed', 'revoked')),
    created_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL,
    ended_at        BIGINT,
    end_reason      TEXT,
    extensions      TEXT[],
    force_command   TEXT,
    source_address  TEXT[]
);
-- The revocation feed lists tasks that ended before they expired: the index holds only
-- ended tasks, so an issuance never writes to it.
CREATE INDEX tasks_ended_expires_at ON tasks (expires_at) WHERE state <> 'active';

-- Issued certificates. Serials are non-zero, 63-bit, unique across replicas (42 bits of
-- issue time in milliseconds, 21 random bits: the primary key grows at its right edge).
-- `issue_order` is the order rows were recorded in (SQLite's rowid), which a
-- certificate's renewals are listed in. `renewed_from` is the serial of the certificate
-- whose proof of possession allowed this one (NULL for a token); no foreign key: the
-- writer looks the parent up under a row lock before it records a renewal.
CREATE TABLE certificates (
    serial           BIGINT  NOT NULL PRIMARY KEY CHECK (serial > 0),
    issue_order      BIGINT  GENERATED ALWAYS AS IDENTITY,
    task_id          TEXT COLLATE "C" NOT NULL REFERENCES tasks (id),
    ca_key_id        TEXT    NOT NULL REFERENCES ca_keys (id),
    key_fingerprint  TEXT    NOT NULL,
    principals       TEXT[]  NOT NULL,
    valid_after      BIGINT  NOT NULL,
    valid_before     BIGINT  NOT NULL,
    issued_at        BIGINT  NOT NULL,
    revoked_at       BIGINT,
    renewed_from     BIGINT
);
CREATE INDEX certificates_task_id ON certificates (task_id);
-- Retirement asks "does any certificate signed by this key outlive now?".
CREATE INDEX certificates_ca_key_valid_before ON certificates (ca_key_id, valid_before);
-- The revocation feed: revoked certificates still inside their validity window.
CREATE INDEX certificates_revoked_valid_before ON certificates (valid_before)
    WHERE revoked_at IS NOT NULL;
-- Revoking a certificate walks its renewals; the index holds renewals only.
CREATE INDEX certificates_renewed_from ON certificates (renewed_from)
    WHERE renewed_from IS NOT NULL;

-- Replay protection: one row per once-only workload token consumed, inserted in the same
-- transaction as the write it allowed. Keyed by the token's expiry (its `exp` plus the
-- longest allowed leeway, so the key does not depend on a setting that may change
-- between two uses), then issuer and hash: a replay finds its own row with one exact
-- lookup, and pruning removes a range at the left edge.
CREATE TABLE used_tokens (
    expires_at  BIGINT  NOT NULL,
    issuer      TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL,
    PRIMARY KEY (expires_at, issuer, token_hash)
);

-- The audit log: append-only, hash-chained (writ-formats `audit`). `time` is RFC 3339
-- UTC with milliseconds, compared bytewise ("C") so ranges by time are ranges of text.
CREATE TABLE audit_events (
    seq              BIGINT  NOT NULL PRIMARY KEY,
    time             TEXT COLLATE "C" NOT NULL,
    event            TEXT    NOT NULL,
    outcome          TEXT    NOT NULL,
    issuer           TEXT,
    subject          TEXT,
    policy           TEXT,
    task_id          TEXT COLLATE "C",
    serial           TEXT,
    key_fingerprint  TEXT,
    logins           TEXT[]  NOT NULL,
    hosts            TEXT[]  NOT NULL,
    host             TEXT,
    ca_fingerprint   TEXT,
    source_ip        TEXT,
    reason           TEXT,
    request_id       TEXT,
    prev_hash        TEXT    NOT NULL,
    hash             TEXT    NOT NULL,
    purpose          TEXT
);
CREATE INDEX audit_events_task_id ON audit_events (task_id);
-- Export and prune by time.
CREATE INDEX audit_events_time ON audit_events (time);
-- Trails follow certificates by serial only for records that name no task.
CREATE INDEX audit_events_serial_without_task ON audit_events (serial)
    WHERE task_id IS NULL;

-- Signed statements "record seq has hash", by the CA key (SSHSIG, namespace
-- audit-checkpoint@writ.dev). Also written outside the database (the checkpoint file).
CREATE TABLE audit_checkpoints (
    seq             BIGINT  NOT NULL PRIMARY KEY,
    hash            TEXT    NOT NULL,
    time            TEXT    NOT NULL,
    ca_fingerprint  TEXT    NOT NULL,
    signature       TEXT    NOT NULL
);

-- The last record each configured [[audit.sink]] delivered.
CREATE TABLE audit_sink_positions (
    sink        TEXT    NOT NULL PRIMARY KEY,
    seq         BIGINT  NOT NULL CHECK (seq >= 0),
    updated_at  TEXT    NOT NULL
);

-- Set by `writ admin audit prune` inside its own transaction (and removed before it
-- commits): records before before_seq may be deleted while it exists. Nothing else can
-- delete a record without first dropping the triggers below — which an attacker with
-- write access to the database can do, and which signed checkpoints and sinks expose.
CREATE TABLE audit_prune_marker (
    id          SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    before_seq  BIGINT   NOT NULL
);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM audit_prune_marker WHERE OLD.seq < before_seq
    ) THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_events is append-only: old records are removed only by writ admin audit prune';
    END IF;
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
