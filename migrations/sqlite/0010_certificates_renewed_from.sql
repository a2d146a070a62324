-- A certificate records the certificate whose proof of possession allowed it, so that
-- revoking a certificate revokes every certificate renewed from it (src/task/lifecycle.rs).
-- Append-only: never edit this file once it has landed; add a new one.
--
-- `renewed_from` is that certificate's serial: NULL when a workload token allowed it, and
-- for certificates issued before this migration. The revocation walks the renewals through
-- the partial index, which holds renewals only, so an issuance with a token does not write
-- to it. No foreign key: the writer already looks the parent up, in the same transaction,
-- before it records a renewal (src/store/sqlite/group_commit.rs, `refusal`).
ALTER TABLE certificates ADD COLUMN renewed_from INTEGER;
CREATE INDEX certificates_renewed_from ON certificates (renewed_from)
    WHERE renewed_from IS NOT NULL;
