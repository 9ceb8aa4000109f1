-- The demo schema: a tiny shop. Used by docker-compose.yml (as an init script) and by
-- scripts/demo.sh. walrelay publishes customers and orders; audit_log is excluded by the filter.
CREATE TABLE customers (
    id            bigserial PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,          -- never leaves the database (filter: ignore)
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    status      text NOT NULL DEFAULT 'new',
    total       numeric(10, 2) NOT NULL,
    items       jsonb NOT NULL DEFAULT '[]',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id   bigserial PRIMARY KEY,
    note text NOT NULL
);

INSERT INTO customers (email, password_hash)
SELECT 'customer' || g || '@example.com', md5(g::text) FROM generate_series(1, 10) g;

INSERT INTO orders (customer_id, total, items)
SELECT 1 + g % 10, round((random() * 100)::numeric, 2), jsonb_build_array(jsonb_build_object('sku', 'A' || g, 'qty', 1))
FROM generate_series(1, 20) g;
