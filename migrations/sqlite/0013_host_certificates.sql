-- Host certificates (issue 17): a second kind of CA key, and the host certificates it
-- signs.
--
-- Every key so far is a user CA key. "One active key" and "at most one next key" become
-- one of each per kind: the partial unique indexes are keyed by kind now.
ALTER TABLE ca_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'user'
    CHECK (kind IN ('user', 'host'));
DROP INDEX ca_keys_one_active;
DROP INDEX ca_keys_one_next;
CREATE UNIQUE INDEX ca_keys_one_active ON ca_keys (kind) WHERE state = 'active';
CREATE UNIQUE INDEX ca_keys_one_next ON ca_keys (kind) WHERE state = 'next';

-- Host certificates: one row per certificate, signed by a host CA key, for the names
-- (`principals`, a JSON array) a `role = "host"` policy granted a host's workload
-- identity (`issuer`, `subject`, `policy`). Serials come from the same allocator as user
-- certificates; the writer refuses a serial taken in either table.
CREATE TABLE host_certificates (
    serial           INTEGER NOT NULL PRIMARY KEY CHECK (serial > 0),
    ca_key_id        TEXT    NOT NULL REFERENCES ca_keys (id),
    key_fingerprint  TEXT    NOT NULL,
    principals       TEXT    NOT NULL,
    issuer           TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    policy           TEXT    NOT NULL,
    valid_after      INTEGER NOT NULL,
    valid_before     INTEGER NOT NULL,
    issued_at        INTEGER NOT NULL,
    revoked_at       INTEGER
);
-- Retirement asks "does any certificate signed by this key outlive now?".
CREATE INDEX host_certificates_ca_key_valid_before
    ON host_certificates (ca_key_id, valid_before);
-- The KRL: revoked host certificates still inside their validity window.
CREATE INDEX host_certificates_revoked_valid_before ON host_certificates (valid_before)
    WHERE revoked_at IS NOT NULL;
