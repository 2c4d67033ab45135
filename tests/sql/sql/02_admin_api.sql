-- The admin API: create_observer (and replace), enable/disable, drop.
\set SHOW_CONTEXT never
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, customer_id int, total numeric(10,2), status text,
                          note text, created_at timestamptz DEFAULT now());

-- a view of the triggers pg_observers installs
CREATE VIEW capture_triggers AS
SELECT t.tgrelid::regclass AS tbl, t.tgname,
       CASE WHEN t.tgenabled = 'D' THEN 'disabled' ELSE 'enabled' END AS state,
       regexp_replace(pg_get_triggerdef(t.oid), '^CREATE TRIGGER \S+ ', '') AS definition
  FROM pg_trigger AS t
 WHERE t.tgfoid = 'observers.capture()'::regprocedure AND NOT t.tgisinternal
 ORDER BY t.tgrelid::regclass::text, t.tgname;

-- defaults: every event, no condition, no filter, group 'default'
SELECT id, name, group_name, table_name, events, condition, columns, ordering_key, actions, enabled
  FROM observers.create_observer('all_orders', 'shop.orders');
SELECT * FROM capture_triggers;

-- everything given (events are case-insensitive and normalized; duplicates are removed)
SELECT id, name, group_name, table_name, events, condition, columns, ordering_key, actions, enabled
  FROM observers.create_observer(
         name => 'big_orders',
         table_name => 'shop.orders',
         events => '{update, insert, INSERT}',
         condition => 'NEW.total > 1000',
         columns => '{status,total,status}',
         ordering_key => '{customer_id}',
         actions => '[{"type": "webhook", "url": "http://127.0.0.1:8080/hooks", "secret": "${HOOK_SECRET}"}]',
         group_name => 'billing');
SELECT * FROM capture_triggers;

-- an empty condition means none; empty column lists mean none
SELECT name, condition, columns, ordering_key
  FROM observers.create_observer('deletes', 'shop.orders', '{DELETE}', condition => '  ',
                                 ordering_key => '{}');

-- replace => true with the same definition: no-op (same id, same triggers)
SELECT tgname, oid AS before_oid INTO TEMP before_replace FROM pg_trigger
 WHERE tgname LIKE 'observers\_2\_%';
SELECT id, name, events FROM observers.create_observer(
         name => 'big_orders', table_name => 'shop.orders', events => '{INSERT,UPDATE}',
         condition => 'NEW.total > 1000', columns => '{status,total}', ordering_key => '{customer_id}',
         actions => '[{"type": "webhook", "url": "http://127.0.0.1:8080/hooks", "secret": "${HOOK_SECRET}"}]',
         group_name => 'billing', replace => true);
SELECT b.tgname, t.oid = b.before_oid AS same_trigger
  FROM before_replace AS b JOIN pg_trigger AS t ON t.tgname = b.tgname ORDER BY 1;

-- replace with new actions only: row updated in place, triggers untouched
SELECT id, name, actions FROM observers.create_observer(
         name => 'big_orders', table_name => 'shop.orders', events => '{INSERT,UPDATE}',
         condition => 'NEW.total > 1000', columns => '{status,total}', ordering_key => '{customer_id}',
         actions => '[{"type": "webhook", "url": "http://127.0.0.1:9090/v2"}]',
         group_name => 'billing', replace => true);
SELECT b.tgname, t.oid = b.before_oid AS same_trigger
  FROM before_replace AS b JOIN pg_trigger AS t ON t.tgname = b.tgname ORDER BY 1;

-- replace with a new condition and events: same id, triggers re-installed
SELECT id, name, events, condition, columns FROM observers.create_observer(
         name => 'big_orders', table_name => 'shop.orders', events => '{UPDATE}',
         condition => 'NEW.total > 5000', columns => '{status}', replace => true);
SELECT * FROM capture_triggers WHERE tgname LIKE 'observers\_2\_%';
SELECT name, group_name, ordering_key, actions FROM observers.observer WHERE name = 'big_orders';

-- disable / enable
SELECT observers.disable_observer('all_orders');
SELECT observers.disable_observer('all_orders');   -- already disabled
SELECT name, enabled FROM observers.observer ORDER BY id;
SELECT * FROM capture_triggers WHERE tgname LIKE 'observers\_1\_%';
-- replacing a disabled observer keeps it disabled
SELECT name, enabled FROM observers.create_observer('all_orders', 'shop.orders', '{INSERT}', replace => true);
SELECT * FROM capture_triggers WHERE tgname LIKE 'observers\_1\_%';
SELECT observers.enable_observer('all_orders');
SELECT observers.enable_observer('all_orders');    -- already enabled
SELECT * FROM capture_triggers WHERE tgname LIKE 'observers\_1\_%';

-- moving an observer to another table
CREATE TABLE shop.customers (id int PRIMARY KEY, name text);
SELECT name, table_name FROM observers.create_observer('all_orders', 'shop.customers', '{INSERT}', replace => true);
SELECT * FROM capture_triggers;

-- drop
SELECT observers.drop_observer('deletes');
SELECT observers.drop_observer('deletes');         -- gone: false, not an error
SELECT name FROM observers.observer ORDER BY id;
SELECT * FROM capture_triggers;

-- what the worker runs
SELECT * FROM observers.observer_definitions('billing');
SELECT * FROM observers.observer_definitions('default');
SELECT * FROM observers.observer_definitions('nobody');

-- observed tables with mixed-case names are labelled schema.table
CREATE TABLE shop."Line Items" (id int);
SELECT name, table_name FROM observers.create_observer('line_items', 'shop."Line Items"');
SELECT name, table_name FROM observers.observer_definitions('default');

-- dropping the observed table leaves the observer (without triggers); enabling it says why not
DROP TABLE shop."Line Items";
SELECT observers.disable_observer('line_items');
SELECT observers.enable_observer('line_items');
SELECT observers.drop_observer('line_items');

DROP VIEW capture_triggers;

-- DROP EXTENSION refuses while observers' triggers exist; CASCADE removes them
DROP EXTENSION pg_observers;
DROP EXTENSION pg_observers CASCADE;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname LIKE 'observers\_%';
CREATE EXTENSION pg_observers;
SELECT count(*) AS observers FROM observers.observer;
DROP SCHEMA shop CASCADE;
