-- The audit keeps the plan file itself, zlib-compressed, once per apply (byte for byte
-- the file that was verified). Applies from this migration on write no
-- reconciler_changes rows for created rows: their images are in this file and their
-- ids are found by key. Older applies (plan_file null) keep their per-row create rows,
-- and roll back as before.
ALTER TABLE reconciler_applies ADD COLUMN IF NOT EXISTS plan_file bytea;
