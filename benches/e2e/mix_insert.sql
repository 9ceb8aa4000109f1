INSERT INTO accounts (owner, balance, note) VALUES ('o' || (random() * 1e6)::int, 100, 'new');
