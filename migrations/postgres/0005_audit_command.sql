-- Audit record format 3: the command an agent ran with a task (`task.run`) gets its own
-- field. Records without one hash exactly as before (the field is left out of the
-- canonical JSON when absent), so every existing chain and signed checkpoint still
-- verifies.
ALTER TABLE audit_events ADD COLUMN command TEXT;
