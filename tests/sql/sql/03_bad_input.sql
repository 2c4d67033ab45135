-- Every input create_observer rejects, and the message that says what to fix.
-- Nothing is written when an input is rejected.
\set SHOW_CONTEXT never
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, customer_id int, total numeric(10,2), status text,
                          tags text[], doc json);
CREATE VIEW shop.order_view AS SELECT * FROM shop.orders;
CREATE MATERIALIZED VIEW shop.order_mv AS SELECT * FROM shop.orders;
CREATE SEQUENCE shop.seq;
CREATE TEMP TABLE scratch (id int);

-- observer names
SELECT observers.create_observer('Big_Orders', 'shop.orders');
SELECT observers.create_observer('1orders', 'shop.orders');
SELECT observers.create_observer('big-orders', 'shop.orders');
SELECT observers.create_observer('', 'shop.orders');
SELECT observers.create_observer(NULL, 'shop.orders');
SELECT observers.create_observer(repeat('a', 64), 'shop.orders');
SELECT length(name) FROM observers.create_observer(repeat('a', 63), 'shop.orders');
SELECT observers.drop_observer(repeat('a', 63));

-- tables
SELECT observers.create_observer('o', 'shop.nope');
SELECT observers.create_observer('o', NULL);
SELECT observers.create_observer('o', 'shop.order_view');
SELECT observers.create_observer('o', 'shop.order_mv');
SELECT observers.create_observer('o', 'shop.seq');
SELECT observers.create_observer('o', 'scratch');
SELECT observers.create_observer('o', 'observers.event');
SELECT observers.create_observer('o', 'observers.observer');
SELECT observers.create_observer('o', 'pg_catalog.pg_class');

-- events
SELECT observers.create_observer('o', 'shop.orders', '{INSERT,TRUNCATE}');
SELECT observers.create_observer('o', 'shop.orders', '{SELECT}');
SELECT observers.create_observer('o', 'shop.orders', '{INSERT,NULL}');
SELECT observers.create_observer('o', 'shop.orders', '{}');
SELECT observers.create_observer('o', 'shop.orders', NULL);

-- columns and ordering_key must name columns of the table
SELECT observers.create_observer('o', 'shop.orders', columns => '{status,totl}');
SELECT observers.create_observer('o', 'shop.orders', columns => '{Status}');
SELECT observers.create_observer('o', 'shop.orders', columns => '{NULL}');
SELECT observers.create_observer('o', 'shop.orders', ordering_key => '{customer}');
-- columns filter UPDATEs
SELECT observers.create_observer('o', 'shop.orders', '{INSERT,DELETE}', columns => '{status}');

-- conditions that do not compile
SELECT observers.create_observer('o', 'shop.orders', condition => 'NEW.total >');
SELECT observers.create_observer('o', 'shop.orders', condition => 'NEW.totl > 10');
SELECT observers.create_observer('o', 'shop.orders', condition => 'NEW.total + 1');
SELECT observers.create_observer('o', 'shop.orders', condition => 'NEW.status > 10');
SELECT observers.create_observer('o', 'shop.orders', condition => 'no_such_function(NEW.id)');
SELECT observers.create_observer('o', 'shop.orders', condition => 'NEW.id IN (SELECT id FROM shop.nope)');
-- NEW and OLD must exist for every captured operation
SELECT observers.create_observer('o', 'shop.orders', condition => 'NEW.total > 1000');
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'OLD.total > 1000');
SELECT observers.create_observer('o', 'shop.orders', '{INSERT,UPDATE}', condition => 'NEW.total > OLD.total');
SELECT observers.create_observer('o', 'shop.orders', '{DELETE}', condition => 'NEW.total > 1000 OR OLD.total > 1000');
-- a condition is one expression: nothing can be smuggled around it
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'true FROM pg_authid');
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'true; DROP TABLE shop.orders');
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'true) OR (true');
SELECT name, condition FROM observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'true -- a comment is fine');
SELECT observers.drop_observer('o');
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'true /* unterminated');
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'NEW.id, NEW.total');
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'NEW.id > 1 ORDER BY 1');
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'true AS ok');
SELECT to_regclass('shop.orders') IS NOT NULL AS orders_still_there;
-- names in conditions are resolved with search_path = pg_catalog: schema-qualify your own
CREATE FUNCTION shop.is_big(numeric) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 > 1000';
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'is_big(NEW.total)');
-- conditions run as observers_capture, which holds no rights: what a condition uses must be
-- usable by PUBLIC (docs/SECURITY.md)
REVOKE EXECUTE ON FUNCTION shop.is_big(numeric) FROM PUBLIC;
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'shop.is_big(NEW.total)');
GRANT USAGE ON SCHEMA shop TO PUBLIC;
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'shop.is_big(NEW.total)');
GRANT EXECUTE ON FUNCTION shop.is_big(numeric) TO PUBLIC;
SELECT name, condition FROM observers.create_observer('o', 'shop.orders', '{INSERT}', condition => 'shop.is_big(NEW.total)');
SELECT observers.drop_observer('o');
REVOKE USAGE ON SCHEMA shop FROM PUBLIC;
-- a condition may not read other tables, whoever could read them
CREATE TABLE shop.vip (customer_id int);
SELECT observers.create_observer('o', 'shop.orders', '{INSERT}',
         condition => 'EXISTS (SELECT 1 FROM shop.vip AS v WHERE v.customer_id = NEW.customer_id)');
-- columns of types without equality (json) can be filtered; conditions may use them as text
SELECT name, columns FROM observers.create_observer('o', 'shop.orders', '{UPDATE}',
         condition => 'NEW.doc::text <> OLD.doc::text', columns => '{doc,tags}');
SELECT observers.drop_observer('o');

-- actions
SELECT observers.create_observer('o', 'shop.orders', actions => '{"type": "webhook"}');
SELECT observers.create_observer('o', 'shop.orders', actions => '["webhook"]');
SELECT observers.create_observer('o', 'shop.orders', actions => '[{"type": "webhook"}, {"url": "http://x"}]');
SELECT observers.create_observer('o', 'shop.orders', actions => '[{"type": 1}]');
SELECT observers.create_observer('o', 'shop.orders', actions => '[{"type": " "}]');
SELECT name, actions FROM observers.create_observer('o', 'shop.orders', actions => NULL);
SELECT observers.drop_observer('o');

-- groups
SELECT observers.create_observer('o', 'shop.orders', group_name => '');
SELECT observers.create_observer('o', 'shop.orders', group_name => NULL);
SELECT observers.create_observer('o', 'shop.orders', group_name => 'has space');
SELECT name, group_name FROM observers.create_observer('o', 'shop.orders', group_name => 'eu-west.1:blue_2');

-- duplicate name without replace
SELECT observers.create_observer('o', 'shop.orders');
SELECT observers.drop_observer('o');

-- unknown observers
SELECT observers.enable_observer('nope');
SELECT observers.disable_observer('nope');
SELECT observers.disable_observer(NULL);
SELECT observers.drop_observer('nope');

-- nothing was left behind by the rejected calls
SELECT count(*) AS observers FROM observers.observer;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgfoid = 'observers.capture()'::regprocedure;

DROP SCHEMA shop CASCADE;
