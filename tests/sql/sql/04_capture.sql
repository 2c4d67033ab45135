-- The capture trigger: payloads of INSERT/UPDATE/DELETE, conditions, the columns filter,
-- transactions, multi-row statements, partitioned tables, schema changes.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, customer_id int, total numeric(10,2), status text,
                          note text);
-- events without their transaction-specific columns
CREATE VIEW ev AS
SELECT e.id, o.name AS observer, e.op, e.new, e.old, e.changed
  FROM observers.event AS e LEFT JOIN observers.observer AS o ON o.id = e.observer_id
 ORDER BY e.id;

SELECT name FROM observers.create_observer('all_orders', 'shop.orders');
SELECT name FROM observers.create_observer('big_orders', 'shop.orders', '{INSERT,UPDATE}',
                                           condition => 'NEW.total > 1000');
SELECT name FROM observers.create_observer('status_changes', 'shop.orders', '{UPDATE}',
                                           columns => '{status}');
SELECT name FROM observers.create_observer('deleted_big', 'shop.orders', '{DELETE}',
                                           condition => 'OLD.total > 1000');

-- INSERT: one event per row and matching observer, whole row in new
INSERT INTO shop.orders VALUES (1, 7, 1500.00, 'new', NULL);
SELECT * FROM ev;
-- a multi-row statement: one event per row (condition true for one of them)
INSERT INTO shop.orders VALUES (2, 8, 10.00, 'new', 'a'), (3, 9, 20.00, 'new', 'b'),
                               (4, 9, 2000.00, 'new', 'c');
SELECT * FROM ev WHERE id > 2;
-- a statement inserting nothing captures nothing
INSERT INTO shop.orders SELECT * FROM shop.orders WHERE false;
SELECT count(*) FROM observers.event;

-- UPDATE: new, old and the changed columns
UPDATE shop.orders SET note = 'gift wrap' WHERE id = 1;
SELECT * FROM ev WHERE id > 5;
-- status is in the columns filter of status_changes
UPDATE shop.orders SET status = 'paid', note = NULL WHERE id = 1;
SELECT * FROM ev WHERE id > 7;
-- an UPDATE that changes nothing: all_orders still sees it (changed is empty), the
-- columns filter of status_changes does not fire
UPDATE shop.orders SET status = status WHERE id = 2;
SELECT * FROM ev WHERE id > 10;
-- NULL to value and value to NULL are changes; equal numeric with another scale is not text-equal
UPDATE shop.orders SET note = NULL, total = 10.0 WHERE id = 2;
UPDATE shop.orders SET customer_id = NULL WHERE id = 3;
SELECT * FROM ev WHERE id > 11;
-- a multi-row UPDATE: one event per row and observer
UPDATE shop.orders SET status = 'shipped' WHERE id IN (3, 4);
SELECT id, observer, op, changed FROM ev WHERE id > 13;

-- DELETE: old only
DELETE FROM shop.orders WHERE id IN (2, 4);
SELECT * FROM ev WHERE id > 19;

-- txid is the writing transaction's id, captured_at its clock; events of one transaction
-- are visible to it before COMMIT
BEGIN;
INSERT INTO shop.orders VALUES (5, 1, 1.00, 'new', NULL);
SELECT count(*) AS own_events, bool_and(txid = pg_current_xact_id()) AS same_txid,
       bool_and(captured_at BETWEEN now() AND clock_timestamp()) AS captured_now
  FROM observers.event WHERE new ->> 'id' = '5';
COMMIT;

-- rolled back changes leave no event (the ids they used are simply skipped)
BEGIN;
INSERT INTO shop.orders VALUES (6, 1, 5000.00, 'new', NULL);
UPDATE shop.orders SET status = 'cancelled' WHERE id = 5;
ROLLBACK;
BEGIN;
INSERT INTO shop.orders VALUES (7, 1, 1.00, 'new', NULL);
SAVEPOINT s;
INSERT INTO shop.orders VALUES (8, 1, 1.00, 'new', NULL);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT id, observer, op, new ->> 'id' AS order_id FROM ev WHERE id > 22;
-- a failing statement leaves no event
INSERT INTO shop.orders VALUES (9, 1, 1.00, 'new', NULL), (7, 1, 1.00, 'dup', NULL);
SELECT count(*) FROM observers.event WHERE new ->> 'id' = '9';

-- INSERT ... ON CONFLICT DO UPDATE: the update is captured as UPDATE
INSERT INTO shop.orders VALUES (7, 1, 3000.00, 'new', NULL)
    ON CONFLICT (id) DO UPDATE SET total = excluded.total;
SELECT id, observer, op, changed FROM ev WHERE id > 26;
-- COPY is captured like INSERT
COPY shop.orders FROM stdin;
10	2	1234.50	new	\N
\.
SELECT id, observer, op, new FROM ev WHERE id > 28;

-- TRUNCATE is not captured
SELECT max(id) AS before_truncate FROM observers.event \gset
TRUNCATE shop.orders;
SELECT count(*) AS events_after_truncate FROM observers.event WHERE id > :before_truncate;

-- writers need no privilege on the outbox (and cannot read it)
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_app;
RESET client_min_messages;
CREATE ROLE regress_app;
GRANT USAGE ON SCHEMA shop TO regress_app;
GRANT INSERT, UPDATE, DELETE, SELECT ON shop.orders TO regress_app;
SET ROLE regress_app;
INSERT INTO shop.orders VALUES (11, 3, 99.00, 'new', NULL);
SELECT count(*) FROM observers.event;
RESET ROLE;
SELECT id, observer, op, new ->> 'id' AS order_id FROM ev WHERE id > 30;

-- a disabled observer captures nothing; re-enabled it captures again
SELECT observers.disable_observer('all_orders');
INSERT INTO shop.orders VALUES (12, 3, 1.00, 'new', NULL);
SELECT observers.enable_observer('all_orders');
INSERT INTO shop.orders VALUES (13, 3, 1.00, 'new', NULL);
SELECT id, observer, op, new ->> 'id' AS order_id FROM ev WHERE id > 31;

-- schema changes of the observed table are picked up by the next capture
ALTER TABLE shop.orders ADD COLUMN channel text DEFAULT 'web';
INSERT INTO shop.orders VALUES (14, 3, 1.00, 'new', NULL);
ALTER TABLE shop.orders DROP COLUMN note;
UPDATE shop.orders SET status = 'paid' WHERE id = 14;
SELECT * FROM ev WHERE id > 32;

-- a condition that fails at run time names the observer in the writer's error
SELECT name FROM observers.create_observer('ratio', 'shop.orders', '{INSERT}',
                                           condition => 'NEW.total / NEW.customer_id > 1');
INSERT INTO shop.orders VALUES (15, 0, 1.00, 'new');
SELECT observers.drop_observer('ratio');
INSERT INTO shop.orders VALUES (15, 0, 1.00, 'new');
SELECT id, observer, op, new ->> 'id' AS order_id FROM ev WHERE id > 35;

-- the writer's search_path cannot change what a condition means: it is compiled and run with
-- search_path = pg_catalog, pg_temp, so a shadowing lower() of the writer is never called
SELECT name FROM observers.create_observer('vip_status', 'shop.orders', '{INSERT}',
                                           condition => 'lower(NEW.status) = ''vip''');
CREATE SCHEMA shadow;
CREATE FUNCTION shadow.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'vip'::text $$;
SET search_path = shadow, pg_catalog, public;
INSERT INTO shop.orders VALUES (30, 1, 1.00, 'new'), (31, 1, 1.00, 'VIP');
RESET search_path;
SELECT observer, new ->> 'id' AS order_id FROM ev WHERE observer = 'vip_status';
SELECT observers.drop_observer('vip_status');
DROP SCHEMA shadow CASCADE;

-- partitioned tables are captured row by row, including writes addressed to a partition
CREATE TABLE shop.payments (id int, region text, amount numeric) PARTITION BY LIST (region);
CREATE TABLE shop.payments_eu PARTITION OF shop.payments FOR VALUES IN ('eu');
CREATE TABLE shop.payments_us PARTITION OF shop.payments FOR VALUES IN ('us');
SELECT name FROM observers.create_observer('payments', 'shop.payments');
SELECT name FROM observers.create_observer('big_payments', 'shop.payments', '{INSERT}',
                                           condition => 'NEW.amount >= 100');
SELECT tgrelid::regclass, tgname, tgtype & 1 = 1 AS row_level FROM pg_trigger
 WHERE tgfoid = 'observers.capture()'::regprocedure AND tgrelid::regclass::text LIKE 'shop.payments%'
 ORDER BY 1, 2;
INSERT INTO shop.payments VALUES (1, 'eu', 100), (2, 'us', 5);
INSERT INTO shop.payments_us VALUES (3, 'us', 7);
UPDATE shop.payments SET region = 'eu' WHERE id = 2;       -- moves the row to another partition
DELETE FROM shop.payments_eu WHERE id = 1;
SELECT * FROM ev WHERE id > 36;

-- without a partition for today, events land in the DEFAULT partition (and maintain() reports
-- that it cannot create that day's partition any more)
CREATE FUNCTION drop_today() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_rel text := 'observers.' || observers._partition_name((now() AT TIME ZONE 'UTC')::date);
BEGIN
    EXECUTE format('ALTER EXTENSION pg_observers DROP TABLE %s', v_rel);
    EXECUTE format('DROP TABLE %s', v_rel);
END
$$;
SELECT drop_today();
INSERT INTO shop.payments VALUES (10, 'eu', 1);
INSERT INTO shop.orders VALUES (20, 1, 1.00, 'new');
SELECT o.name, e.tableoid::regclass AS partition
  FROM observers.event AS e JOIN observers.observer AS o ON o.id = e.observer_id
 WHERE coalesce(e.new, e.old) ->> 'id' IN ('10', '20') ORDER BY e.id;
SELECT regexp_replace(observers.maintain(), 'event_p\d{8}', 'event_pYYYYMMDD', 'g');
DROP FUNCTION drop_today();

SELECT max(id) AS before_items FROM observers.event \gset

-- conditions over a statement's transition table (plain table) and over single rows
-- (partitioned table) select the same rows
CREATE TABLE shop.items (id int PRIMARY KEY, qty int);
CREATE TABLE shop.items_p (id int, qty int) PARTITION BY RANGE (id);
CREATE TABLE shop.items_p1 PARTITION OF shop.items_p FOR VALUES FROM (0) TO (1000);
SELECT name FROM observers.create_observer('items_in', 'shop.items', '{INSERT}', condition => 'NEW.qty > 10');
SELECT name FROM observers.create_observer('items_out', 'shop.items', '{DELETE}', condition => 'OLD.qty > 10');
SELECT name FROM observers.create_observer('items_p_in', 'shop.items_p', '{INSERT}', condition => 'NEW.qty > 10');
SELECT name FROM observers.create_observer('items_p_out', 'shop.items_p', '{DELETE}', condition => 'OLD.qty > 10');
INSERT INTO shop.items SELECT g, g * 5 FROM generate_series(1, 4) AS g;
INSERT INTO shop.items_p SELECT g, g * 5 FROM generate_series(1, 4) AS g;
DELETE FROM shop.items WHERE id <> 3;
DELETE FROM shop.items_p WHERE id <> 3;
SELECT id, observer, op, new, old FROM ev WHERE id > :before_items;

-- a condition may not read other tables (it is a pure predicate over NEW/OLD, SPEC 2.7)
CREATE TABLE shop.vip (customer_id int);
INSERT INTO shop.vip VALUES (42);
SELECT name FROM observers.create_observer('vip_orders', 'shop.orders', '{INSERT}',
         condition => 'NEW.customer_id IN (SELECT v.customer_id FROM shop.vip AS v)');
INSERT INTO shop.orders VALUES (16, 42, 1.00, 'new'), (17, 43, 1.00, 'new');
SELECT observer, new ->> 'id' AS order_id FROM ev WHERE observer = 'vip_orders';

-- large values (TOAST) are captured whole, and unchanged ones are not reported as changed
CREATE TABLE shop.docs (id int PRIMARY KEY, body text, title text);
SELECT name FROM observers.create_observer('docs', 'shop.docs');
INSERT INTO shop.docs VALUES (1, repeat('x', 100000), 'a');
UPDATE shop.docs SET title = 'b';
UPDATE shop.docs SET body = body || 'y';
SELECT op, length(new ->> 'body') AS new_body, length(old ->> 'body') AS old_body, changed
  FROM ev WHERE observer = 'docs';

DROP SCHEMA shop CASCADE;
DROP OWNED BY regress_app;
DROP ROLE regress_app;
