-- Payloads are exactly to_jsonb(row), for every kind of column type, whichever way the
-- trigger writes them: directly (observer without condition) or through SQL (with a condition
-- that uses the whole row, the one kind still evaluated by an SPI statement; other conditions
-- are compiled in-process and use the direct writer: 24_capture_fast_paths).
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
CREATE EXTENSION IF NOT EXISTS amcheck;
RESET client_min_messages;

CREATE SCHEMA shop;
CREATE TYPE shop.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE shop.pair AS (a int, b text);
CREATE DOMAIN shop.posint AS int CHECK (VALUE > 0);
CREATE DOMAIN shop.code AS text;
CREATE TABLE shop.kinds (
    id int PRIMARY KEY,
    i2 smallint, i4 int, i8 bigint, num numeric, num_scaled numeric(12,4),
    f4 real, f8 double precision, flag boolean,
    t text, vc varchar(20), ch char(5), nm name, "Odd ""Name"" é" text,
    u uuid, d date, ts timestamp, tstz timestamptz, tm time, iv interval,
    b bytea, js json, jb jsonb, ints int[], texts text[], pr shop.pair, md shop.mood,
    pos shop.posint, cd shop.code, addr inet, pt point, gone int);
ALTER TABLE shop.kinds DROP COLUMN gone;

SELECT name FROM observers.create_observer('direct', 'shop.kinds');
SELECT name FROM observers.create_observer('through_sql', 'shop.kinds', '{INSERT}', condition => '(NEW IS NULL) IS NOT NULL');
SELECT name FROM observers.create_observer('through_sql_u', 'shop.kinds', '{UPDATE}', condition => '(NEW IS NULL) IS NOT NULL');
SELECT name FROM observers.create_observer('through_sql_d', 'shop.kinds', '{DELETE}', condition => '(OLD IS NULL) IS NOT NULL');

INSERT INTO shop.kinds VALUES
  (1, -32768, 2147483647, -9223372036854775808, 12345678901234567890.123456789, 3.1000,
   1.5, 0.1, true, 'plain', 'varchar', 'ab', 'a_name', 'odd', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
   '2026-11-26', '2026-11-26 10:00:00.123456', '2026-11-26 10:00:00.123456+00', '10:11:12', '1 day 2 hours',
   '\x00ff', '{"b": 1, "a": [1, 2]}', '{"b": 1, "a": [1, 2]}', '{1,2,NULL}', '{"x","y z"}', ROW(1, 'one'),
   'happy', 7, 'X-1', '192.168.0.1/24', '(1,2)'),
  (2, 0, 0, 0, 'NaN', -0.0001, 'Infinity', '-Infinity', false, E'quote " backslash \\ tab \t newline \n unicode ☃',
   '', '', '', '', NULL, 'infinity', '-infinity', 'infinity', NULL, NULL,
   NULL, '"a json string"', '"a jsonb string"', '{}', '{}', ROW(NULL, NULL), 'sad', 1, '', NULL, NULL),
  (3, NULL, NULL, NULL, 'Infinity', NULL, 'NaN', 1e-300, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, 'null', 'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (4, 1, 1, 1, 0.00, 0, -0.0, 1.7976931348623157e308, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, '[1, "two", {"three": 3}]', '12.50', NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL);

-- both paths wrote the same payload, and it is to_jsonb of the row under the canonical
-- formats (UTC, ISO dates, postgres interval style, hex bytea), whatever the writer's session
-- says: pg_regress runs psql with TimeZone PST8PDT, DateStyle Postgres and IntervalStyle
-- postgres_verbose, so the rows above were written with those (docs/WEBHOOKS.md)
SHOW TimeZone;
SHOW IntervalStyle;
SET TimeZone = 'UTC';
SET IntervalStyle = postgres;
SET DateStyle = 'ISO, MDY';
SELECT k.id,
       d.new = s.new AS direct_equals_sql,
       d.new = to_jsonb(k) AS direct_equals_to_jsonb,
       d.new::text = to_jsonb(k)::text AS same_text
  FROM shop.kinds AS k
  JOIN observers.event AS d ON d.observer_id = 1 AND (d.new ->> 'id')::int = k.id
  JOIN observers.event AS s ON s.observer_id = 2 AND (s.new ->> 'id')::int = k.id
 ORDER BY k.id;
-- what a payload looks like
SELECT key, value, jsonb_typeof(value) AS type
  FROM observers.event AS e, jsonb_each(e.new)
 WHERE e.observer_id = 1 AND e.new ->> 'id' IN ('1', '2')
 ORDER BY e.id, key;
RESET TimeZone;
RESET IntervalStyle;
RESET DateStyle;

-- UPDATE (row by row) and DELETE (per statement), both paths
UPDATE shop.kinds SET t = t || '!', jb = '{"changed": true}', f8 = f8 * 2 WHERE id IN (1, 2);
DELETE FROM shop.kinds WHERE id IN (3, 4);
SELECT d.op, (coalesce(d.new, d.old) ->> 'id')::int AS id,
       d.new IS NOT DISTINCT FROM s.new AND d.old IS NOT DISTINCT FROM s.old AS direct_equals_sql,
       d.changed = s.changed AS same_changed, d.changed
  FROM observers.event AS d
  JOIN observers.event AS s ON s.observer_id IN (3, 4) AND s.op = d.op
                           AND coalesce(s.new, s.old) ->> 'id' = coalesce(d.new, d.old) ->> 'id'
 WHERE d.observer_id = 1 AND d.op <> 'INSERT'
 ORDER BY d.op DESC, 2;

-- the same over a partitioned table (row-level capture)
CREATE TABLE shop.pkinds (LIKE shop.kinds) PARTITION BY RANGE (id);
CREATE TABLE shop.pkinds_1 PARTITION OF shop.pkinds FOR VALUES FROM (0) TO (100);
SELECT name FROM observers.create_observer('p_direct', 'shop.pkinds', '{INSERT}');
SELECT name FROM observers.create_observer('p_sql', 'shop.pkinds', '{INSERT}', condition => 'NEW.id > 0');
INSERT INTO shop.pkinds SELECT * FROM shop.kinds;
SET TimeZone = 'UTC';
SET IntervalStyle = postgres;
SET DateStyle = 'ISO, MDY';
SELECT count(*) AS rows, bool_and(d.new = s.new) AS direct_equals_sql, bool_and(d.new = to_jsonb(k)) AS equals_to_jsonb
  FROM shop.pkinds AS k
  JOIN observers.event AS d ON d.observer_id = 5 AND (d.new ->> 'id')::int = k.id
  JOIN observers.event AS s ON s.observer_id = 6 AND (s.new ->> 'id')::int = k.id;
RESET TimeZone;
RESET IntervalStyle;
RESET DateStyle;

-- all events of one statement share captured_at and txid; ids follow the rows
INSERT INTO shop.kinds (id) SELECT g FROM generate_series(10, 14) AS g;
SELECT count(*) AS events, count(DISTINCT captured_at) AS captured_at_values, count(DISTINCT txid) AS txids,
       max(id) - min(id) + 1 = count(*) AS consecutive_ids
  FROM observers.event WHERE observer_id = 1 AND (new ->> 'id')::int >= 10;

-- a statement bigger than one write chunk (256 events)
INSERT INTO shop.kinds (id, t) SELECT g, repeat('x', g % 50) FROM generate_series(1000, 1999) AS g;
SELECT count(*) AS events, bool_and(e.new = to_jsonb(k)) AS equals_to_jsonb, count(DISTINCT e.id) AS distinct_ids
  FROM observers.event AS e JOIN shop.kinds AS k ON k.id = (e.new ->> 'id')::int
 WHERE e.observer_id = 1 AND k.id >= 1000;
-- the index entries written with the rows find them (index-only paths forced)
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) AS found_by_id_index FROM observers.event AS e
 WHERE e.id BETWEEN (SELECT min(id) FROM observers.event WHERE observer_id = 1 AND (new ->> 'id')::int >= 1000)
                AND (SELECT max(id) FROM observers.event WHERE observer_id = 1 AND (new ->> 'id')::int >= 1000)
   AND e.observer_id = 1;
RESET enable_bitmapscan;
RESET enable_seqscan;
-- ... and they are the outbox's only index entries: one index, the btree on id (every index of
-- the outbox is paid for by every captured write; 10_tables.sql)
SELECT i.indrelid::regclass AS outbox, pg_get_indexdef(i.indexrelid) AS only_index
  FROM pg_index AS i WHERE i.indrelid = 'observers.event'::regclass;
SELECT count(*) AS all_ok FROM (SELECT bt_index_check(i.indexrelid, true) FROM pg_index AS i
                                  JOIN pg_class AS c ON c.oid = i.indexrelid
                                 WHERE i.indrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'observers.event'::regclass)
                                   AND c.relam = (SELECT oid FROM pg_am WHERE amname = 'btree')) AS x;

DROP SCHEMA shop CASCADE;
