-- The platform's content tables, exactly as the platform's own schema creates them.
-- IF NOT EXISTS: on a database the platform already created, this adopts the tables as
-- they are, rows included. Never drop or rename anything the platform owns.
CREATE TABLE IF NOT EXISTS whitelabel_models (
  id             serial PRIMARY KEY,
  folder_name    text NOT NULL UNIQUE,
  thumbnail_url  text,
  icon_url       text,
  banner_url     text,
  post_count     integer DEFAULT 0,
  status         text DEFAULT 'pending',
  last_synced_at timestamp,
  created_at     timestamp DEFAULT now()
);
CREATE TABLE IF NOT EXISTS whitelabel_posts (
  id                  serial PRIMARY KEY,
  whitelabel_model_id integer NOT NULL REFERENCES whitelabel_models(id) ON DELETE CASCADE,
  folder_name         text NOT NULL,
  title               text,
  media_cdns          json,
  created_at          timestamp DEFAULT now(),
  UNIQUE (whitelabel_model_id, folder_name)
);
CREATE TABLE IF NOT EXISTS whitelabel_media (
  id                 serial PRIMARY KEY,
  whitelabel_post_id integer NOT NULL REFERENCES whitelabel_posts(id) ON DELETE CASCADE,
  s3_key             text NOT NULL UNIQUE,
  url                text NOT NULL,
  type               text NOT NULL,
  created_at         timestamp DEFAULT now()
);
