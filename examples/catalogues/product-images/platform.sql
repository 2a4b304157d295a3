-- The product-image platform's own tables, as the platform created them (reconciler adopts them).
-- products and product_variants belong to the platform: reconciler only looks them up.
-- product_images is reconciler's to keep in line with the bucket's
-- products/{product_id}/{variant_weight}/{image_type}/{file} objects.
CREATE TABLE products (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE product_variants (
    id         serial PRIMARY KEY,
    product_id text NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    weight     text NOT NULL,
    is_active  boolean NOT NULL DEFAULT true,
    UNIQUE (product_id, weight)
);

CREATE TABLE product_images (
    id             serial PRIMARY KEY,
    variant_id     integer NOT NULL REFERENCES product_variants(id) ON DELETE CASCADE,
    product_id     text NOT NULL,
    variant_weight text NOT NULL,
    image_type     text NOT NULL,
    file_name      text NOT NULL UNIQUE,
    image_url      text NOT NULL,
    sort_order     integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The shop's products and variants (the platform's rows; reconciler only looks them up).
-- p99 is not here, so bucket/products/p99/... is skipped as unknown_parent.
INSERT INTO products (id, name) VALUES ('p42', 'Oat granola'), ('p7', 'Wildflower honey');
INSERT INTO product_variants (product_id, weight) VALUES ('p42', '500g'), ('p42', '1kg'), ('p7', '250g');
