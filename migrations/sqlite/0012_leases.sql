-- Once-only background work (scheduled rotation, key retirement, audit sinks, signed
-- checkpoints): the process that holds the lease `name` until `expires_at` (Unix
-- seconds) does it; another takes the lease over once it has expired.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
