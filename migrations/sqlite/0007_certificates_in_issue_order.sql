-- Issue 7: certificates are stored in the order they were issued, and the per-row trigger
-- moves into the one code path that records certificates.
-- Append-only: never edit this file once it has landed; add a new one.
--
-- The table was keyed by its random serial, so every certificate landed on a random page
-- and split pages all over the tree; a batch of N certificates wrote about 2N pages to the
-- WAL. Now rows are appended at the table's right edge (implicit rowid) and the serial
-- keeps its uniqueness and its lookups through a narrow index (about 200 serials per page
-- instead of about 15 rows).
--
-- The trigger `certificates_signing_key_usable` (0003) refused a certificate whose CA key
-- is retired or revoked. Any trigger makes SQLite keep a statement journal (a copy of
-- every page the insert touches) for each row; the same check is now made by the only
-- writer of this table, in the same transaction, before the row is written
-- (src/store/sqlite/group_commit.rs, `refusal`).
CREATE TABLE certificates_in_issue_order (
    serial           INTEGER NOT NULL UNIQUE CHECK (serial > 0),
    task_id          TEXT    NOT NULL REFERENCES tasks (id),
    ca_key_id        TEXT    NOT NULL REFERENCES ca_keys (id),
    key_fingerprint  TEXT    NOT NULL,
    principals       TEXT    NOT NULL,
    valid_after      INTEGER NOT NULL,
    valid_before     INTEGER NOT NULL,
    issued_at        INTEGER NOT NULL,
    revoked_at       INTEGER
);
INSERT INTO certificates_in_issue_order (serial, task_id, ca_key_id, key_fingerprint,
        principals, valid_after, valid_before, issued_at, revoked_at)
    SELECT serial, task_id, ca_key_id, key_fingerprint, principals, valid_after,
           valid_before, issued_at, revoked_at
    FROM certificates ORDER BY issued_at, serial;
DROP TABLE certificates;
ALTER TABLE certificates_in_issue_order RENAME TO certificates;
CREATE INDEX certificates_task_id ON certificates (task_id);
CREATE INDEX certificates_valid_before ON certificates (valid_before);
CREATE INDEX certificates_ca_key_valid_before ON certificates (ca_key_id, valid_before);
