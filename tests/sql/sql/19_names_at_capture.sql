-- Names at capture time (39_event_names.sql): after a table is renamed, moved to another schema
-- or dropped, and after an ordering-key column is renamed, the events captured before keep the
-- table name and ordering key they were captured under; later events get the new ones.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

CREATE SCHEMA shop;
CREATE SCHEMA archive;
CREATE TABLE shop.orders (id int PRIMARY KEY, customer_id int, status text);
SELECT name FROM observers.create_observer('orders', 'shop.orders', ordering_key => '{customer_id}',
                                           columns => '{status}',
                                           actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/x"}]');
SELECT name FROM observers.create_observer('plain', 'shop.orders', '{INSERT}');
CREATE VIEW delivered AS
SELECT f.id - min(f.id) OVER () + 1 AS n, o.name AS observer, f.ordering_key,
       f.body::jsonb ->> 'table' AS "table", f.body::jsonb -> 'new' ->> 'id' AS row_id
  FROM observers.batch_fetch('default', '1:1:', pg_current_snapshot(), 0, 9223372036854775807, 1000) AS f
  JOIN observers.observer AS o ON o.id = f.observer_id;

INSERT INTO shop.orders VALUES (1, 10, 'new');
ALTER TABLE shop.orders RENAME TO purchases;
INSERT INTO shop.purchases VALUES (2, 20, 'new');
ALTER TABLE shop.purchases RENAME COLUMN customer_id TO client_id;
INSERT INTO shop.purchases VALUES (3, 30, 'new');
UPDATE shop.purchases SET status = 'paid' WHERE id = 3;
-- the observer follows the rename (its key and columns filter name the column by its new name)
SELECT name, ordering_key, columns FROM observers.observer ORDER BY id;
ALTER TABLE shop.purchases SET SCHEMA archive;
ALTER SCHEMA archive RENAME TO old_archive;
INSERT INTO old_archive.purchases VALUES (4, 40, 'new');
-- two renames with no event in between: the events before them keep the first name
ALTER TABLE old_archive.purchases RENAME TO p2;
ALTER TABLE old_archive.p2 RENAME TO p3;
INSERT INTO old_archive.p3 VALUES (5, 50, 'new');
SELECT * FROM delivered ORDER BY n;
SELECT o.name, h.table_label, h.ordering_key
  FROM observers.observer_names AS h JOIN observers.observer AS o ON o.id = h.observer_id
 ORDER BY o.name, h.until_id;

-- dropped: every event keeps the last name the table had, not its OID
DROP TABLE old_archive.p3;
SELECT n, observer, ordering_key, "table", row_id FROM delivered WHERE n >= 7 ORDER BY n;
-- replay builds the same bodies as batch_fetch
SELECT observers.replay('orders', 0, 9223372036854775807) > 0 AS replayed;
SELECT count(*) AS replayed_pairs,
       count(*) FILTER (WHERE p.body = f.body) AS same_body
  FROM observers.parked AS p
  JOIN observers.batch_fetch('default', '1:1:', pg_current_snapshot(), 0, 9223372036854775807, 1000) AS f
    ON f.id = p.event_id;

-- a DDL the trigger cannot follow never fails the user's command (nothing observed here)
CREATE TABLE shop.other (id int);
ALTER TABLE shop.other RENAME TO other2;
DROP TABLE shop.other2;

DROP VIEW delivered;
DROP SCHEMA shop CASCADE;
DROP SCHEMA old_archive CASCADE;
