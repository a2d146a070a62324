-- Audit record format 2: a task's purpose gets its own field (it was written into
-- `reason`, and so became OCSF `status_detail`). Records without a purpose hash exactly
-- as before (the field is left out of the canonical JSON when absent), so every existing
-- chain and signed checkpoint still verifies.
ALTER TABLE audit_events ADD COLUMN purpose TEXT;
