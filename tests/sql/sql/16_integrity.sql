-- Capture integrity (32_integrity.sql): schema changes that remove or switch off a capture
-- trigger are reported by status() (capture_error) and by a WARNING to the session that ran the
-- DDL, and repair_observer() / enable_observer() put back what is missing.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
DROP SCHEMA IF EXISTS shop CASCADE;
DROP ROLE IF EXISTS shop_owner;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

CREATE OR REPLACE FUNCTION try(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- the event triggers: members of the extension, enabled
SELECT e.evtname, e.evtevent, e.evttags, e.evtenabled, e.evtfoid::regproc AS function,
       EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_event_trigger'::regclass
                  AND d.objid = e.oid AND d.deptype = 'e') AS member
  FROM pg_event_trigger e WHERE e.evtname LIKE 'pg\_observers\_%' ORDER BY 1;

-- the tables belong to an ordinary role, as an application's tables do
CREATE ROLE shop_owner;
CREATE SCHEMA shop AUTHORIZATION shop_owner;
SET ROLE shop_owner;
CREATE TABLE shop.orders (id int PRIMARY KEY, total numeric, status text, note text);
CREATE TABLE shop.parts (id int, qty int) PARTITION BY RANGE (id);
CREATE TABLE shop.parts_1 PARTITION OF shop.parts FOR VALUES FROM (0) TO (100);
CREATE TABLE shop.parts_2 PARTITION OF shop.parts FOR VALUES FROM (100) TO (200);
RESET ROLE;

-- creating, replacing, disabling and enabling observers changes triggers without any warning
SELECT name FROM observers.create_observer('status_changes', 'shop.orders', '{INSERT,UPDATE}',
    columns => '{status}', actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/s"}]');
SELECT name FROM observers.create_observer('all_orders', 'shop.orders',
    actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/a"}]');
SELECT name FROM observers.create_observer('parts', 'shop.parts', '{INSERT}',
    actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/p"}]');
SELECT name FROM observers.create_observer('all_orders', 'shop.orders', '{INSERT,DELETE}',
    actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/a"}]', replace => true);
SELECT observers.disable_observer('all_orders'), observers.enable_observer('all_orders');

CREATE VIEW capture AS
SELECT observer, enabled, capture_error FROM observers.status() ORDER BY observer;
CREATE VIEW events AS
SELECT o.name, e.op, count(*) FROM observers.event e JOIN observers.observer o ON o.id = e.observer_id
 GROUP BY 1, 2 ORDER BY 1, 2;
SELECT * FROM capture;

-- 1. DROP COLUMN ... CASCADE of a `columns` column drops the UPDATE trigger (PostgreSQL says
--    only NOTICE); pg_observers warns, status() reports it, and repair cannot re-create it as
--    defined: it says what to do instead
SET ROLE shop_owner;
ALTER TABLE shop.orders DROP COLUMN status;
ALTER TABLE shop.orders DROP COLUMN status CASCADE;
RESET ROLE;
SELECT * FROM capture;
INSERT INTO shop.orders VALUES (1, 10, 'x');
UPDATE shop.orders SET note = 'y' WHERE id = 1;
SELECT * FROM events;
SELECT try($$SELECT * FROM observers.repair_observer('status_changes')$$);
SELECT try($$SELECT observers.enable_observer('status_changes')$$);
\set SHOW_CONTEXT errors
SELECT * FROM observers.repair_observer('status_changes');
\set SHOW_CONTEXT never
SELECT name, columns FROM observers.create_observer('status_changes', 'shop.orders', '{INSERT,UPDATE}',
    columns => '{note}', actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/s"}]', replace => true);
SELECT * FROM capture;

-- 2. the table's owner drops a capture trigger: INSERTs are no longer captured, until repair
SET ROLE shop_owner;
DROP TRIGGER observers_2_insert ON shop.orders;
RESET ROLE;
SELECT * FROM capture;
DELETE FROM observers.event;
INSERT INTO shop.orders VALUES (2, 20, 'lost');
SELECT * FROM events;
SELECT * FROM observers.repair_observer('all_orders');
SELECT * FROM capture;
INSERT INTO shop.orders VALUES (3, 30, 'captured');
SELECT * FROM events;
SELECT * FROM observers.repair_observer('all_orders');

-- 3. the owner disables a capture trigger (ENABLE REPLICA switches it off just the same)
SET ROLE shop_owner;
ALTER TABLE shop.orders DISABLE TRIGGER observers_2_delete;
ALTER TABLE shop.orders ENABLE REPLICA TRIGGER observers_1_update;
RESET ROLE;
SELECT * FROM capture;
SELECT * FROM observers.repair_observer('all_orders');
SELECT * FROM observers.repair_observer('status_changes');
SELECT * FROM capture;

-- 4. DISABLE TRIGGER ALL on one partition: that partition's rows are no longer captured
SET ROLE shop_owner;
ALTER TABLE shop.parts_2 DISABLE TRIGGER ALL;
RESET ROLE;
SELECT * FROM capture;
DELETE FROM observers.event;
INSERT INTO shop.parts VALUES (1, 1), (150, 1);
SELECT * FROM events;
SELECT * FROM observers.repair_observer('parts');
INSERT INTO shop.parts VALUES (2, 1), (151, 1);
SELECT * FROM events;
SELECT * FROM capture;

-- 5. disable/enable: a trigger dropped while the observer is disabled is re-created by
--    enable_observer() (it used to stay missing)
SELECT observers.disable_observer('all_orders');
SET ROLE shop_owner;
DROP TRIGGER observers_2_delete ON shop.orders;
RESET ROLE;
SELECT * FROM capture;
SELECT observers.enable_observer('all_orders');
SELECT * FROM capture;
DELETE FROM observers.event;
DELETE FROM shop.orders WHERE id = 3;
SELECT * FROM events;
-- enable_observer() on an enabled observer repairs too (and still returns false)
SET ROLE shop_owner;
DROP TRIGGER observers_2_delete ON shop.orders;
RESET ROLE;
SELECT observers.enable_observer('all_orders');
SELECT * FROM capture;

-- 6. a renamed trigger still captures, but disable/drop would no longer find it
SET ROLE shop_owner;
ALTER TRIGGER observers_2_insert ON shop.orders RENAME TO my_trigger;
RESET ROLE;
SELECT * FROM capture;
SELECT * FROM observers.repair_observer('all_orders');

-- 7. a disabled observer whose trigger the owner enabled captures although it is disabled
SELECT observers.disable_observer('parts');
SET ROLE shop_owner;
ALTER TABLE shop.parts ENABLE TRIGGER observers_3_insert;
RESET ROLE;
SELECT * FROM capture;
SELECT * FROM observers.repair_observer('parts');
SELECT * FROM capture;
SELECT observers.enable_observer('parts');

-- 8. a trigger of someone else under the capture trigger's name: repair refuses, says why
SET ROLE shop_owner;
DROP TRIGGER observers_2_insert ON shop.orders;
CREATE FUNCTION shop.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER observers_2_insert AFTER INSERT ON shop.orders FOR EACH ROW EXECUTE FUNCTION shop.noop();
RESET ROLE;
SELECT * FROM capture;
SELECT try($$SELECT * FROM observers.repair_observer('all_orders')$$);
SET ROLE shop_owner;
DROP TRIGGER observers_2_insert ON shop.orders;
RESET ROLE;
SELECT * FROM observers.repair_observer('all_orders');

-- 9. the event triggers never fail the user's DDL, whatever goes wrong inside them
ALTER FUNCTION observers._warn_capture_problems(int[], text[], text) RENAME TO _warn_renamed;
SET ROLE shop_owner;
DROP TRIGGER observers_2_insert ON shop.orders;
ALTER TABLE shop.orders DISABLE TRIGGER observers_2_delete;
RESET ROLE;
ALTER FUNCTION observers._warn_renamed(int[], text[], text) RENAME TO _warn_capture_problems;
SELECT * FROM capture;
SELECT * FROM observers.repair_observer('all_orders');

-- 10. dropping the table itself is how a table is retired: no warning, but the observer is left
--     with nothing to watch (status says so; repair says to drop it)
SET ROLE shop_owner;
DROP TABLE shop.parts;
RESET ROLE;
SELECT * FROM capture;
SELECT try($$SELECT * FROM observers.repair_observer('parts')$$);
SELECT observers.drop_observer('parts');
SELECT try($$SELECT * FROM observers.repair_observer('nope')$$);

-- who may repair: operators, not the worker or anyone else
SELECT has_function_privilege('observers_admin', 'observers.repair_observer(text)', 'EXECUTE') AS admin,
       has_function_privilege('observers_worker', 'observers.repair_observer(text)', 'EXECUTE') AS worker,
       has_function_privilege('shop_owner', 'observers.repair_observer(text)', 'EXECUTE') AS owner;

-- DROP EXTENSION ... CASCADE removes the capture triggers and the event triggers, quietly
DROP EXTENSION pg_observers CASCADE;
SELECT count(*) AS capture_triggers FROM pg_trigger WHERE tgname LIKE 'observers\_%';
SELECT count(*) AS event_triggers FROM pg_event_trigger WHERE evtname LIKE 'pg\_observers\_%';
SET ROLE shop_owner;
ALTER TABLE shop.orders ADD COLUMN extra int;
RESET ROLE;
DROP SCHEMA shop CASCADE;
DROP ROLE shop_owner;
CREATE EXTENSION pg_observers;
