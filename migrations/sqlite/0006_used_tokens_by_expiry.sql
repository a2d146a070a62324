-- Issue 7: a consumed token is recorded at the right edge of its table instead of at a
-- random place. The key starts with the token's expiry (`exp` plus the longest leeway any
-- issuer may be configured with, src/config.rs MAX_LEEWAY), then issuer and hash: a
-- replayed token has the same `exp`, so it finds its own row with one exact lookup, and
-- tokens used around the same time sit on the same few pages. Pruning removes a range at
-- the left edge, so the separate expiry index goes too.
-- Append-only: never edit this file once it has landed; add a new one.

CREATE TABLE used_tokens_by_expiry (
    expires_at  INTEGER NOT NULL,
    issuer      TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL,
    PRIMARY KEY (expires_at, issuer, token_hash)
) WITHOUT ROWID;

-- Rows recorded before this migration carry the expiry computed with the issuer's leeway
-- of the time, which a replay could no longer reproduce; they keep their old table and
-- key, every replay check consults it too, and pruning empties it within the longest
-- token lifetime.
ALTER TABLE used_tokens RENAME TO used_tokens_before_0006;
ALTER TABLE used_tokens_by_expiry RENAME TO used_tokens;
