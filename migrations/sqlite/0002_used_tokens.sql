-- Replay protection: one row per workload token used (per issuer), inserted in the same
-- transaction as the issuance it allowed. Pruned after the token's exp + leeway.
CREATE TABLE used_tokens (
    issuer      TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (issuer, token_hash)
);
CREATE INDEX used_tokens_expires_at ON used_tokens (expires_at);
