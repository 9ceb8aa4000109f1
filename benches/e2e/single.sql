INSERT INTO orders (customer, status, total, note, created_at, paid, score, tags, ref, payload)
VALUES ((random() * 10000)::int, 'new', round((random() * 500)::numeric, 2), 'pgbench order',
        now(), false, random(), ARRAY['a', 'b'], gen_random_uuid(), '{"source": "pgbench"}');
