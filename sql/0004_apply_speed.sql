-- The audit keeps the plan file itself, zlib-compressed, once per apply (byte for byte
-- the file that was verified). Applies from this migration on write no
-- reconciler_changes rows for created rows: their images are in this file and their
-- ids are found by key. Older applies (plan_file null) keep their per-row create rows,
-- and roll back as before.
ALTER TABLE reconciler_applies ADD COLUMN IF NOT EXISTS plan_file bytea;
-- Compressed already: stored out of line without another compression attempt.
ALTER TABLE reconciler_applies ALTER COLUMN plan_file SET STORAGE EXTERNAL;

-- The state digest, kept per model so that a plan's staleness check costs what its scope
-- holds, not what the tables hold. Per model and kind: the count of managed rows and the
-- sums of the two 64-bit halves of each row's md5 — exactly the terms of the full-scan
-- digest in reconciler/current.py (additive over rows), so a scope's digest is a sum over
-- its models and equals the full scan's, for plans made before and after this table.
-- Kept by triggers on the content tables, in the same transaction as every write, by
-- reconciler and by the platform alike. A media row's hash holds its post's and model's
-- folder names (a post's its model's): renaming a model or post re-hashes its children.
CREATE TABLE IF NOT EXISTS reconciler_digest (
  model_id integer NOT NULL,
  kind     text NOT NULL,              -- model, post, media
  n        bigint NOT NULL DEFAULT 0,
  a        numeric NOT NULL DEFAULT 0,
  b        numeric NOT NULL DEFAULT 0,
  PRIMARY KEY (model_id, kind)
);

-- rc_digest_sql(contributions): the statement that adds signed row hashes
-- (model_id, kind, sign, md5 hex) to the table. Sums of bigints per sign, then
-- subtracted: numeric, never overflowing. Triggers EXECUTE it themselves (a transition
-- table is visible only to the trigger's own function).
CREATE OR REPLACE FUNCTION rc_digest_sql(q text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT format($f$
    INSERT INTO reconciler_digest AS d (model_id, kind, n, a, b)
    SELECT model_id, kind,
           sum(sign),
           coalesce(sum(ha) FILTER (WHERE sign > 0), 0) - coalesce(sum(ha) FILTER (WHERE sign < 0), 0),
           coalesce(sum(hb) FILTER (WHERE sign > 0), 0) - coalesce(sum(hb) FILTER (WHERE sign < 0), 0)
    FROM (SELECT model_id, kind, sign,
                 ('x' || substr(h, 1, 16))::bit(64)::bigint AS ha,
                 ('x' || substr(h, 17, 16))::bit(64)::bigint AS hb
          FROM (%s) c (model_id, kind, sign, h)) x
    GROUP BY model_id, kind
    ON CONFLICT (model_id, kind) DO UPDATE SET n = d.n + excluded.n, a = d.a + excluded.a, b = d.b + excluded.b
  $f$, q)
$$;

-- Every model's terms from the tables themselves: the migration's start, and after TRUNCATE.
CREATE OR REPLACE FUNCTION rc_digest_rebuild() RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  DELETE FROM reconciler_digest;
  EXECUTE rc_digest_sql($q$
    SELECT m.id, 'model', 1, md5(row(m.folder_name, m.thumbnail_url, m.icon_url, m.banner_url, m.post_count)::text)
    FROM whitelabel_models m
    UNION ALL
    SELECT m.id, 'post', 1, md5(row(m.folder_name, p.folder_name, p.title, p.media_cdns::text)::text)
    FROM whitelabel_posts p JOIN whitelabel_models m ON m.id = p.whitelabel_model_id
    UNION ALL
    SELECT m.id, 'media', 1, md5(row(x.s3_key, m.folder_name, p.folder_name, x.url, x.type, x.size_bytes, x.etag)::text)
    FROM whitelabel_media x JOIN whitelabel_posts p ON p.id = x.whitelabel_post_id
    JOIN whitelabel_models m ON m.id = p.whitelabel_model_id $q$);
  RETURN;
END $$;

CREATE OR REPLACE FUNCTION rc_digest_truncated() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  PERFORM rc_digest_rebuild();
  RETURN NULL;
END $$;

-- Models. A deleted model takes its posts and media with it (ON DELETE CASCADE): its
-- terms go before the row does; the cascaded children then find no model and add nothing.
CREATE OR REPLACE FUNCTION rc_digest_models() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    EXECUTE rc_digest_sql($q$
      SELECT n.id, 'model', 1, md5(row(n.folder_name, n.thumbnail_url, n.icon_url, n.banner_url, n.post_count)::text)
      FROM rc_new n $q$);
  ELSE  -- UPDATE
    EXECUTE rc_digest_sql($q$
      SELECT o.id, 'model', -1, md5(row(o.folder_name, o.thumbnail_url, o.icon_url, o.banner_url, o.post_count)::text)
      FROM rc_old o
      UNION ALL
      SELECT n.id, 'model', 1, md5(row(n.folder_name, n.thumbnail_url, n.icon_url, n.banner_url, n.post_count)::text)
      FROM rc_new n
      UNION ALL  -- a renamed model's posts and media, re-hashed under the new name
      SELECT n.id, 'post', s.sign, md5(row(CASE WHEN s.sign < 0 THEN o.folder_name ELSE n.folder_name END,
                                           p.folder_name, p.title, p.media_cdns::text)::text)
      FROM rc_old o JOIN rc_new n ON n.id = o.id AND n.folder_name IS DISTINCT FROM o.folder_name
      JOIN whitelabel_posts p ON p.whitelabel_model_id = n.id CROSS JOIN (VALUES (-1), (1)) s (sign)
      UNION ALL
      SELECT n.id, 'media', s.sign, md5(row(x.s3_key, CASE WHEN s.sign < 0 THEN o.folder_name ELSE n.folder_name END,
                                            p.folder_name, x.url, x.type, x.size_bytes, x.etag)::text)
      FROM rc_old o JOIN rc_new n ON n.id = o.id AND n.folder_name IS DISTINCT FROM o.folder_name
      JOIN whitelabel_posts p ON p.whitelabel_model_id = n.id
      JOIN whitelabel_media x ON x.whitelabel_post_id = p.id CROSS JOIN (VALUES (-1), (1)) s (sign) $q$);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION rc_digest_model_deleted() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  DELETE FROM reconciler_digest WHERE model_id = OLD.id;
  RETURN OLD;
END $$;

-- Posts. A deleted post takes its media with it: both are taken out before the row
-- goes, while its model's name can still be read.
CREATE OR REPLACE FUNCTION rc_digest_posts() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    EXECUTE rc_digest_sql($q$
      SELECT m.id, 'post', 1, md5(row(m.folder_name, n.folder_name, n.title, n.media_cdns::text)::text)
      FROM rc_new n JOIN whitelabel_models m ON m.id = n.whitelabel_model_id $q$);
  ELSE  -- UPDATE
    EXECUTE rc_digest_sql($q$
      SELECT m.id, 'post', -1, md5(row(m.folder_name, o.folder_name, o.title, o.media_cdns::text)::text)
      FROM rc_old o JOIN whitelabel_models m ON m.id = o.whitelabel_model_id
      UNION ALL
      SELECT m.id, 'post', 1, md5(row(m.folder_name, n.folder_name, n.title, n.media_cdns::text)::text)
      FROM rc_new n JOIN whitelabel_models m ON m.id = n.whitelabel_model_id
      UNION ALL  -- a renamed or re-parented post's media, re-hashed
      SELECT om.id, 'media', -1, md5(row(x.s3_key, om.folder_name, o.folder_name, x.url, x.type, x.size_bytes, x.etag)::text)
      FROM rc_old o JOIN rc_new n ON n.id = o.id
        AND (n.folder_name, n.whitelabel_model_id) IS DISTINCT FROM (o.folder_name, o.whitelabel_model_id)
      JOIN whitelabel_models om ON om.id = o.whitelabel_model_id
      JOIN whitelabel_media x ON x.whitelabel_post_id = n.id
      UNION ALL
      SELECT nm.id, 'media', 1, md5(row(x.s3_key, nm.folder_name, n.folder_name, x.url, x.type, x.size_bytes, x.etag)::text)
      FROM rc_old o JOIN rc_new n ON n.id = o.id
        AND (n.folder_name, n.whitelabel_model_id) IS DISTINCT FROM (o.folder_name, o.whitelabel_model_id)
      JOIN whitelabel_models nm ON nm.id = n.whitelabel_model_id
      JOIN whitelabel_media x ON x.whitelabel_post_id = n.id $q$);
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION rc_digest_post_deleted() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  EXECUTE rc_digest_sql(format($q$
    SELECT m.id, 'post', -1, md5(row(m.folder_name, p.folder_name, p.title, p.media_cdns::text)::text)
    FROM whitelabel_posts p JOIN whitelabel_models m ON m.id = p.whitelabel_model_id WHERE p.id = %1$s
    UNION ALL
    SELECT m.id, 'media', -1, md5(row(x.s3_key, m.folder_name, p.folder_name, x.url, x.type, x.size_bytes, x.etag)::text)
    FROM whitelabel_media x JOIN whitelabel_posts p ON p.id = x.whitelabel_post_id
    JOIN whitelabel_models m ON m.id = p.whitelabel_model_id WHERE p.id = %1$s $q$, OLD.id));
  RETURN OLD;
END $$;

-- Media. Rows deleted with their post (cascade) find no post here: the post's trigger
-- took them out already.
CREATE OR REPLACE FUNCTION rc_digest_media() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    EXECUTE rc_digest_sql($q$
      SELECT m.id, 'media', -1, md5(row(o.s3_key, m.folder_name, p.folder_name, o.url, o.type, o.size_bytes, o.etag)::text)
      FROM rc_old o JOIN whitelabel_posts p ON p.id = o.whitelabel_post_id
      JOIN whitelabel_models m ON m.id = p.whitelabel_model_id $q$);
  END IF;
  IF TG_OP IN ('UPDATE', 'INSERT') THEN
    EXECUTE rc_digest_sql($q$
      SELECT m.id, 'media', 1, md5(row(n.s3_key, m.folder_name, p.folder_name, n.url, n.type, n.size_bytes, n.etag)::text)
      FROM rc_new n JOIN whitelabel_posts p ON p.id = n.whitelabel_post_id
      JOIN whitelabel_models m ON m.id = p.whitelabel_model_id $q$);
  END IF;
  RETURN NULL;
END $$;

-- Statement-level triggers with transition tables: one pass per statement, not one
-- call per row (a million-row apply is a handful of statements).
DROP TRIGGER IF EXISTS rc_digest_ins ON whitelabel_models;
DROP TRIGGER IF EXISTS rc_digest_upd ON whitelabel_models;
DROP TRIGGER IF EXISTS rc_digest_del ON whitelabel_models;
DROP TRIGGER IF EXISTS rc_digest_trunc ON whitelabel_models;
CREATE TRIGGER rc_digest_ins AFTER INSERT ON whitelabel_models REFERENCING NEW TABLE AS rc_new
  FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_models();
CREATE TRIGGER rc_digest_upd AFTER UPDATE ON whitelabel_models REFERENCING OLD TABLE AS rc_old NEW TABLE AS rc_new
  FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_models();
CREATE TRIGGER rc_digest_del BEFORE DELETE ON whitelabel_models FOR EACH ROW EXECUTE FUNCTION rc_digest_model_deleted();
CREATE TRIGGER rc_digest_trunc AFTER TRUNCATE ON whitelabel_models FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_truncated();

DROP TRIGGER IF EXISTS rc_digest_ins ON whitelabel_posts;
DROP TRIGGER IF EXISTS rc_digest_upd ON whitelabel_posts;
DROP TRIGGER IF EXISTS rc_digest_del ON whitelabel_posts;
DROP TRIGGER IF EXISTS rc_digest_trunc ON whitelabel_posts;
CREATE TRIGGER rc_digest_ins AFTER INSERT ON whitelabel_posts REFERENCING NEW TABLE AS rc_new
  FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_posts();
CREATE TRIGGER rc_digest_upd AFTER UPDATE ON whitelabel_posts REFERENCING OLD TABLE AS rc_old NEW TABLE AS rc_new
  FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_posts();
CREATE TRIGGER rc_digest_del BEFORE DELETE ON whitelabel_posts FOR EACH ROW EXECUTE FUNCTION rc_digest_post_deleted();
CREATE TRIGGER rc_digest_trunc AFTER TRUNCATE ON whitelabel_posts FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_truncated();

DROP TRIGGER IF EXISTS rc_digest_ins ON whitelabel_media;
DROP TRIGGER IF EXISTS rc_digest_upd ON whitelabel_media;
DROP TRIGGER IF EXISTS rc_digest_del ON whitelabel_media;
DROP TRIGGER IF EXISTS rc_digest_trunc ON whitelabel_media;
CREATE TRIGGER rc_digest_ins AFTER INSERT ON whitelabel_media REFERENCING NEW TABLE AS rc_new
  FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_media();
CREATE TRIGGER rc_digest_upd AFTER UPDATE ON whitelabel_media REFERENCING OLD TABLE AS rc_old NEW TABLE AS rc_new
  FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_media();
CREATE TRIGGER rc_digest_del AFTER DELETE ON whitelabel_media REFERENCING OLD TABLE AS rc_old
  FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_media();
CREATE TRIGGER rc_digest_trunc AFTER TRUNCATE ON whitelabel_media FOR EACH STATEMENT EXECUTE FUNCTION rc_digest_truncated();

-- An adopted database: every model's terms from the rows it holds (the triggers, made
-- above, already lock out writers until this transaction commits).
SELECT rc_digest_rebuild();
