-- One round of the demo load generator: a new customer, a new order, an order paid, an old
-- order deleted, a row in the (unpublished) audit log. Run in a loop by the loadgen service
-- and by scripts/demo.sh.
INSERT INTO customers (email, password_hash)
VALUES ('c' || floor(random() * 1e9)::bigint || '@example.com', md5(random()::text));

INSERT INTO orders (customer_id, total)
VALUES ((SELECT max(id) FROM customers), round((random() * 100)::numeric, 2));

UPDATE orders SET status = 'paid', updated_at = now()
WHERE id = (SELECT min(id) FROM orders WHERE status = 'new');

DELETE FROM orders WHERE id = (SELECT min(id) FROM orders WHERE status = 'paid')
  AND (SELECT count(*) FROM orders) > 50;

INSERT INTO audit_log (note) VALUES ('loadgen round');
