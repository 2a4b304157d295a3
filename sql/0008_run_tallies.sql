-- What a run's listing held, for the status cards of `reconciler serve` (GET /api/status/{key}
-- and ?by=top): the skipped objects by reason, and per top key the objects under it and those
-- skipped. Only the newest check of each key needs its tallies: a full check's clear those of
-- the runs before it (see reconciler/controller/runs.py), so a catalogue's tallies are kept
-- about once, whatever the number of runs.
ALTER TABLE reconciler_runs ADD COLUMN IF NOT EXISTS skipped jsonb;  -- {reason: n}
ALTER TABLE reconciler_runs ADD COLUMN IF NOT EXISTS tops jsonb;     -- {top key: {"objects": n, "skipped": {reason: n}}}
