-- CA key rotation (SPEC §5): when each key stopped signing or was revoked, the rotation
-- schedule, and guards that keep a retired or revoked key from ever signing again.
-- Append-only: never edit this file once it has landed; add a new one.

-- When the key left `active` (became `retiring`, or `revoked` while active).
ALTER TABLE ca_keys ADD COLUMN deactivated_at INTEGER;
-- When the key was revoked (emergency removal from trust).
ALTER TABLE ca_keys ADD COLUMN revoked_at INTEGER;

-- At most one key waits to sign: rotation promotes it, and a spare would stay published.
CREATE UNIQUE INDEX ca_keys_one_next ON ca_keys (state) WHERE state = 'next';

-- Rotation schedule set by `writ admin ca schedule --every …`; at most one row.
CREATE TABLE ca_rotation_schedule (
    id             INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    every_seconds  INTEGER NOT NULL CHECK (every_seconds > 0),
    set_at         INTEGER NOT NULL
);

-- Retirement asks "does any certificate signed by this key outlive now?".
CREATE INDEX certificates_ca_key_valid_before ON certificates (ca_key_id, valid_before);

-- A certificate is recorded only if its signing key may still sign: `active`, or
-- `retiring` for a server that has not yet reloaded the keyring after a rotation (the
-- key is still trusted then). A key that is retired or revoked never signs again, even
-- from a replica holding a stale keyring: the issuance fails and no certificate leaves.
CREATE TRIGGER certificates_signing_key_usable BEFORE INSERT ON certificates
WHEN (SELECT state FROM ca_keys WHERE id = NEW.ca_key_id) NOT IN ('active', 'retiring')
BEGIN
    SELECT RAISE(ABORT, 'the signing CA key is retired or revoked');
END;
