-- Privileges: an ordinary role can neither create observers nor read payloads; operators
-- (observers_admin) manage observers and read everything; the worker (observers_worker) runs
-- the worker API and applies its observers, nothing more.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
DROP ROLE IF EXISTS regress_nobody;
DROP ROLE IF EXISTS regress_admin;
DROP ROLE IF EXISTS regress_worker;
RESET client_min_messages;

CREATE ROLE regress_nobody;
CREATE ROLE regress_admin IN ROLE observers_admin;
CREATE ROLE regress_worker IN ROLE observers_worker;
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, secret text);
CREATE TABLE shop.payroll (id int PRIMARY KEY, salary int);
GRANT USAGE ON SCHEMA shop TO regress_nobody, regress_admin, regress_worker;
GRANT CREATE ON SCHEMA shop TO regress_nobody;
GRANT ALL ON shop.orders TO regress_nobody;
GRANT SELECT ON shop.orders TO regress_admin, regress_worker;
SELECT name FROM observers.create_observer('orders', 'shop.orders');
INSERT INTO shop.orders VALUES (1, 'card 4242');

-- an ordinary role: no access to the schema at all
SET ROLE regress_nobody;
SELECT observers.create_observer('mine', 'shop.orders');
SELECT count(*) FROM observers.event;
SELECT * FROM observers.status();
SELECT observers.lease_acquire('default', 'x', '1 minute');
-- it may write observed tables (its changes are captured) ...
INSERT INTO shop.orders VALUES (2, 'card 5555');
-- ... but cannot attach the capture function to a table of its own
CREATE TABLE shop.own (id int);
CREATE TRIGGER t AFTER INSERT ON shop.own FOR EACH ROW EXECUTE FUNCTION observers.capture('1');
-- nor set the retention
SET observers.retention = '1 day';
RESET ROLE;
SELECT count(*) AS captured FROM observers.event;

-- an operator
SET ROLE regress_admin;
SELECT name FROM observers.create_observer('admin_orders', 'shop.orders', '{INSERT}');
-- only tables it can read
SELECT observers.create_observer('payroll', 'shop.payroll');
SELECT observers.disable_observer('admin_orders');
SELECT observers.enable_observer('admin_orders');
SELECT count(*) AS events, max(new ->> 'secret') AS readable FROM observers.event;
SELECT count(*) FROM observers.checkpoint;
SELECT observer, backlog FROM observers.status() ORDER BY 1;
SELECT observers.maintain() ~ '^created \d+; ' AS maintained;   -- (not 0: midnight may have passed)
-- not the worker's functions
SELECT observers.lease_acquire('default', 'x', '1 minute');
-- not the capture function, not the outbox for writing
INSERT INTO observers.event (observer_id, op) VALUES (1, 'INSERT');
SELECT observers.drop_observer('admin_orders');
RESET ROLE;

-- the worker
SET ROLE regress_worker;
SELECT observers.lease_acquire('default', 'w1', '1 minute');
SELECT max_id FROM observers.batch_open('default', 1);
SELECT count(*) FROM observers.batch_open('default', 1) AS o,
       observers.batch_fetch('default', o.snap_lo, o.snap_hi, 0, o.max_id, 10) AS b;
-- it may read the registry, checkpoints, leases and heartbeats (no payloads)
SELECT count(*) FROM observers.checkpoint;
SELECT count(*) FROM observers.observer;
SELECT observers.checkpoint_save('default', 1, 2);
SELECT observers.batch_close('default', 1);
SELECT observers.heartbeat('default', 'w1', '{}');
SELECT count(*) FROM observers.observer_definitions('default');
SELECT observers.maintain() ~ '^created \d+; ' AS maintained;   -- (not 0: midnight may have passed)
SELECT observer FROM observers.status() ORDER BY 1;
-- it applies the observers of its YAML file at start ...
SELECT name FROM observers.create_observer('from_yaml', 'shop.orders', '{DELETE}', replace => true);
SELECT name FROM observers.create_observer('from_yaml', 'shop.orders', '{DELETE}', replace => true);
-- ... but does not drop or disable observers, nor read the outbox directly
SELECT observers.drop_observer('from_yaml');
SELECT observers.disable_observer('from_yaml');
SELECT count(*) FROM observers.event;
SELECT count(*) FROM observers.dlq;
RESET ROLE;

-- the creator is checked through SET ROLE, even from inside SECURITY DEFINER code
SET ROLE regress_worker;
SELECT observers.create_observer('payroll', 'shop.payroll');
RESET ROLE;

DROP SCHEMA shop CASCADE;
DROP OWNED BY regress_nobody, regress_admin, regress_worker;
DROP ROLE regress_nobody;
DROP ROLE regress_admin;
DROP ROLE regress_worker;
