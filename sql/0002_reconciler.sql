-- Managed media columns the bucket listing provides, and the tool's own tables.
ALTER TABLE whitelabel_media ADD COLUMN IF NOT EXISTS size_bytes bigint;
ALTER TABLE whitelabel_media ADD COLUMN IF NOT EXISTS etag text;

-- The platform indexes only unique columns; joins from a child to its parent need these.
CREATE INDEX IF NOT EXISTS whitelabel_posts_model_idx ON whitelabel_posts (whitelabel_model_id);
CREATE INDEX IF NOT EXISTS whitelabel_media_post_idx ON whitelabel_media (whitelabel_post_id);

-- One row per apply: the audit log's header.
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
  rolls_back      bigint REFERENCES reconciler_applies(id)
);

-- One row per change, with full before and after images of the row (ids included;
-- row_to_json of the whole row) and, next to each, the parent's natural key (a post's
-- model, a media item's post), which a rollback needs when the parent itself is gone. (kind, key) is
-- unique within an apply (plans are validated for it); the index is on apply_id alone,
-- because a first apply writes a million rows here in one statement.
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
