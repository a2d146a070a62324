-- A task keeps the restrictions its first certificate was granted: every later
-- certificate of the task carries at most these (src/task/lifecycle.rs).
-- Append-only: never edit this file once it has landed; add a new one.
--
-- `extensions` is a JSON array (empty for none), `force_command` the forced command or
-- NULL, `source_address` a JSON array of blocks or NULL. `extensions` is NULL only for
-- tasks opened before this migration, which recorded none; their renewals are bounded by
-- their policy as it is now, as they were before.
ALTER TABLE tasks ADD COLUMN extensions TEXT;
ALTER TABLE tasks ADD COLUMN force_command TEXT;
ALTER TABLE tasks ADD COLUMN source_address TEXT;
