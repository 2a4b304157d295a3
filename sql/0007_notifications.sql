-- Notifications, approval policies and change windows (`reconciler serve`).

-- Runs: who asked for a manual or rollback run (a policy may refuse them as their own
-- only approver); a fingerprint of the plan's changes alone, without the time the plan
-- was made, so that the same drift found again is recognised (notifications are sent
-- once for it, and approvals carry over to the run that supersedes it); the reason a
-- person gave to apply inside a closed change window; and the status whose
-- notifications were queued (the outbox: see reconciler/controller/notify.py).
ALTER TABLE reconciler_runs ADD COLUMN IF NOT EXISTS triggered_by text;
ALTER TABLE reconciler_runs ADD COLUMN IF NOT EXISTS fingerprint text;
ALTER TABLE reconciler_runs ADD COLUMN IF NOT EXISTS override_reason text;
ALTER TABLE reconciler_runs ADD COLUMN IF NOT EXISTS notified_status text;
-- Runs made before notifications existed are not news.
UPDATE reconciler_runs SET notified_status = status;
CREATE INDEX IF NOT EXISTS reconciler_runs_unnotified_idx ON reconciler_runs (id)
  WHERE notified_status IS DISTINCT FROM status;
CREATE INDEX IF NOT EXISTS reconciler_runs_fingerprint_idx ON reconciler_runs (fingerprint)
  WHERE fingerprint IS NOT NULL;

-- The audit keeps the reason of an apply made inside a closed change window.
ALTER TABLE reconciler_applies ADD COLUMN IF NOT EXISTS override_reason text;

-- One row per person who approved a run (a token's name). A run that supersedes one
-- with the same changes is given its approvals (carried_from says from which run).
CREATE TABLE IF NOT EXISTS reconciler_approvals (
  run_id       bigint NOT NULL REFERENCES reconciler_runs(id) ON DELETE CASCADE,
  person       text NOT NULL,
  approved_at  timestamptz NOT NULL DEFAULT now(),
  carried_from bigint REFERENCES reconciler_runs(id) ON DELETE SET NULL,
  PRIMARY KEY (run_id, person)
);

-- One row per notification to one destination. dedup_key names the event (a run's
-- outcome, a drift's fingerprint, a leadership): unique per destination, so an event
-- queued twice (two replicas, a retry after a crash) is delivered once.
CREATE TABLE IF NOT EXISTS reconciler_deliveries (
  id              bigserial PRIMARY KEY,
  destination     text NOT NULL,
  event           text NOT NULL,
  dedup_key       text NOT NULL,
  run_id          bigint REFERENCES reconciler_runs(id) ON DELETE SET NULL,
  body            text NOT NULL,
  status          text NOT NULL DEFAULT 'pending',   -- pending, delivered, failed
  attempts        integer NOT NULL DEFAULT 0,
  created_at      timestamptz NOT NULL DEFAULT now(),
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  delivered_at    timestamptz,
  last_error      text,
  UNIQUE (destination, dedup_key)
);
CREATE INDEX IF NOT EXISTS reconciler_deliveries_due_idx ON reconciler_deliveries (next_attempt_at)
  WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS reconciler_deliveries_recent_idx ON reconciler_deliveries (id DESC);
