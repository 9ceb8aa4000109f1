\set id random(1, 20000)
UPDATE accounts SET balance = balance + 1, note = 'updated' WHERE id = :id;
