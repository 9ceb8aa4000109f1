-- A bulk job, marked so walrelay's flood guard summarizes it instead of publishing 1,000 events.
BEGIN;
SELECT pg_logical_emit_message(true, 'walrelay.bulk', 'demo: reprice all orders');
UPDATE orders SET total = total * 1.01, updated_at = now();
COMMIT;
