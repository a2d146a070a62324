-- Issue 7: the revocation feed's two range indexes hold only what the feed lists.
-- Append-only: never edit this file once it has landed; add a new one.
--
-- The feed (`Store::revocations`) lists tasks that ended before they expired and revoked
-- certificates that are still inside their validity window. Its indexes held every task
-- and every certificate, so each issuance appended to both in its commit; as partial
-- indexes they are written only when a task ends or a certificate is revoked, and the
-- feed query reads only the rows it returns. Nothing else queries these columns by range.
DROP INDEX tasks_expires_at;
CREATE INDEX tasks_ended_expires_at ON tasks (expires_at) WHERE state != 'active';
DROP INDEX certificates_valid_before;
CREATE INDEX certificates_revoked_valid_before ON certificates (valid_before)
    WHERE revoked_at IS NOT NULL;
