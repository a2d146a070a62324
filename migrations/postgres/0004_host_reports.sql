-- What hosts report about themselves (issues 19 and 20; the same change as SQLite's
-- migration 0014), each report authenticated with the host's workload token under a
-- `role = "host"` policy covering the host's name.
--
-- The revocation feed each host last applied: `writ admin task revoke` counts the hosts
-- whose `sequence` reached the revocation's. One row per host name, overwritten.
CREATE TABLE host_feeds (
    host        TEXT    NOT NULL PRIMARY KEY,
    issuer      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    sequence    BIGINT  NOT NULL,
    applied_at  BIGINT  NOT NULL,
    reported_at BIGINT  NOT NULL
);

-- The latest standing-access inventory of each host (`writ-principals inventory
-- --report`): whether writ enforcement is configured and the summary as reported (JSON:
-- verdict counts, logins and their verdicts, problems).
CREATE TABLE inventory_hosts (
    host          TEXT    NOT NULL PRIMARY KEY,
    issuer        TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    reported_at   BIGINT  NOT NULL,
    writ_enforced BIGINT  NOT NULL CHECK (writ_enforced IN (0, 1)),
    summary       TEXT    NOT NULL
);

-- Each static credential a host reported: a public key in a login's authorized_keys
-- (`kind = 'static_key'`, `subject` the login) or an unencrypted private key
-- (`kind = 'private_key'`, `subject` its path). `first_seen` is the report that first
-- had it, `last_seen` the latest that still did; `gone_at` the first report without it.
-- A key that comes back is a new row.
CREATE TABLE inventory_findings (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host        TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('static_key', 'private_key')),
    subject     TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    first_seen  BIGINT  NOT NULL,
    last_seen   BIGINT  NOT NULL,
    gone_at     BIGINT
);
CREATE INDEX inventory_findings_live ON inventory_findings (host) WHERE gone_at IS NULL;
CREATE INDEX inventory_findings_by_fingerprint ON inventory_findings (fingerprint);
