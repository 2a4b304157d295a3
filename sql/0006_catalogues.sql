-- Catalogues. Migrations 0001-0004 are the creators catalogue's schema as it grew, and
-- run only for it (their files never change: their checksums are recorded). From here
-- on, migrations run for every catalogue: this one makes the tool's own tables where a
-- catalogue's database lacks them (a creators database has them all already: every
-- statement is IF NOT EXISTS), and the record of the catalogue the database holds. The
-- catalogue's own tables, columns and digest triggers are derived from its spec by
-- `reconciler init` (reconciler/install.py), not written here.

-- One row per apply: the audit log's header, with the plan file itself (zlib).
CREATE TABLE IF NOT EXISTS reconciler_applies (
  id              bigserial PRIMARY KEY,
  plan_id         text NOT NULL UNIQUE,
  applied_at      timestamptz NOT NULL DEFAULT now(),
  db_user         text NOT NULL DEFAULT current_user,
  os_user         text,
  tool_version    text NOT NULL,
  source          text,
  scope           jsonb,
  summary         jsonb NOT NULL,
  plan_created_at timestamptz,
  rolls_back      bigint REFERENCES reconciler_applies(id),
  plan_file       bytea
);
ALTER TABLE reconciler_applies ALTER COLUMN plan_file SET STORAGE EXTERNAL;

-- One row per updated, moved or deleted row, with full before and after images (ids
-- included) and, next to each, the parent's plan key.
CREATE TABLE IF NOT EXISTS reconciler_changes (
  apply_id bigint NOT NULL REFERENCES reconciler_applies(id),
  kind     text NOT NULL,
  action   text NOT NULL,
  key      text NOT NULL,
  row_id   integer,
  before   json,
  after    json,
  before_parent text,
  after_parent  text
);
CREATE INDEX IF NOT EXISTS reconciler_changes_apply_idx ON reconciler_changes (apply_id);

-- Controller mode (`reconciler serve`): runs, S3 events, and the controller's shared state.

-- One row per planning attempt. The plan file is stored zlib-compressed, byte for byte
-- what `reconciler plan -o` writes, so that any replica can serve and apply it.
CREATE TABLE IF NOT EXISTS reconciler_runs (
  id            bigserial PRIMARY KEY,
  status        text NOT NULL,             -- planning, no_changes, planned, refused, errored,
                                           -- applying, applied, apply_errored, discarded, superseded, stale
  trigger       text NOT NULL,             -- schedule, event, manual, rollback
  scope         jsonb,                     -- null: every model; else a sorted list of model names
  created_at    timestamptz NOT NULL DEFAULT now(),
  planned_at    timestamptz,               -- when planning finished (the check time)
  finished_at   timestamptz,               -- when the run reached a final state
  owner         integer,                   -- the replica working on it (see reconciler/controller.py)
  phase         text,
  progress      jsonb,                     -- counts as the run goes: objects listed, rows read, …
  plan_id       text,
  summary       jsonb,
  change_count  integer,
  current_rows  integer,
  object_count  integer,
  plan_file     bytea,                     -- zlib(plan file)
  decided_by    text,                      -- who approved or discarded (a token's name, or a policy)
  decided_at    timestamptz,
  apply_id      bigint REFERENCES reconciler_applies(id),
  rolls_back    bigint REFERENCES reconciler_applies(id),
  plan_seconds  double precision,
  apply_seconds double precision,
  error         text                       -- one line
);
CREATE INDEX IF NOT EXISTS reconciler_runs_status_idx ON reconciler_runs (status);

-- S3 event notifications (webhook or SQS), stored before they are acted on; the leader
-- turns the pending ones into one run per debounce window. dedup is unique: the same
-- bucket, key and sequencer twice is one event.
CREATE TABLE IF NOT EXISTS reconciler_events (
  id          bigserial PRIMARY KEY,
  received_at timestamptz NOT NULL DEFAULT now(),
  via         text NOT NULL,               -- webhook, sqs
  bucket      text NOT NULL,
  key         text NOT NULL,
  event_name  text,
  sequencer   text,
  model       text NOT NULL,
  dedup       text NOT NULL UNIQUE,
  run_id      bigint REFERENCES reconciler_runs(id),
  handled_at  timestamptz
);
CREATE INDEX IF NOT EXISTS reconciler_events_pending_idx ON reconciler_events (received_at) WHERE handled_at IS NULL;

-- One row: what every replica can show about the loop (who leads, when it checks next).
CREATE TABLE IF NOT EXISTS reconciler_controller (
  id            integer PRIMARY KEY CHECK (id = 1),
  leader        text,
  leader_since  timestamptz,
  next_check_at timestamptz,
  updated_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO reconciler_controller (id) VALUES (1) ON CONFLICT DO NOTHING;

-- The catalogue this database holds (one per database): what `init` installed, so that
-- plan and apply refuse to run under another spec until `init` installs it.
CREATE TABLE IF NOT EXISTS reconciler_catalogue (
  id           integer PRIMARY KEY CHECK (id = 1),
  name         text NOT NULL,
  fingerprint  text NOT NULL,
  spec         jsonb NOT NULL,
  installed_at timestamptz NOT NULL DEFAULT now()
);
