-- The capture fast paths of issue 13, each against what PostgreSQL itself computes:
-- * conditions compiled in-process (an expression over the NEW/OLD slots) instead of an SPI
--   statement: same events, same errors, rights checked at every capture after a REVOKE, the
--   SPI statement kept for whole-row references;
-- * payloads written straight into jsonb's binary form, integers as numerics and timestamptz
--   texts formatted in Rust: the stored payload equals to_jsonb(row) stored the same way, in
--   value, text and size, for wide rows (more than 32 jsonb entries), integer and time edges;
-- * `changed` compared without output functions for canonical types.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

CREATE SCHEMA fp;
CREATE VIEW fp.ev AS
SELECT e.id, o.name AS observer, e.op, e.new, e.old, e.changed
  FROM observers.event AS e JOIN observers.observer AS o ON o.id = e.observer_id;

-- 1. payloads: integers, timestamptz, numerics, text, bool, NULL; more than 16 columns
CREATE TABLE fp.wide (id int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, n numeric, t text,
                      b boolean, ts timestamptz, d date, f float8,
                      c10 int, c11 int, c12 int, c13 int, c14 int, c15 int, c16 int, c17 int,
                      c18 text, c19 text);
SELECT name FROM observers.create_observer('wide', 'fp.wide', '{INSERT}');
SET TimeZone = 'Asia/Kolkata';
INSERT INTO fp.wide (id, i2, i4, i8, n, t, b, ts) VALUES
  (1, 0, 0, 0, 0, '', true, '2000-01-01 00:00:00+00'),
  (2, -1, -1, -1, -1.5, 'x', false, '1999-12-31 23:59:59.999999+00'),
  (3, 32767, 2147483647, 9223372036854775807, 1e100, 'y', NULL, 'infinity'),
  (4, -32768, -2147483648, -9223372036854775808, 'NaN', NULL, true, '-infinity'),
  (5, 10000, 100000000, 10000000000000000, 0.000001, 'z', true, '4713-11-24 00:00:00+00 BC'),
  (6, 9999, 99990000, 99999999, 12.50, 'é', false, '294276-12-31 23:59:59.999999+00'),
  (7, 1000, -100000000, 100010001000, 3.0, 'q', true, '0001-12-31 23:59:59.5+00 BC'),
  (8, 1, 20000, 12345678901234, 7, 'r', false, '2026-11-26 10:00:00.12+00');
INSERT INTO fp.wide
SELECT g, (g % 30000)::smallint, g * 7919, g::bigint * 1000000007 * (1 - 2 * (g % 2)),
       round(g / 7.0, g % 5), repeat('ab', g % 4), g % 3 = 0,
       '2000-01-01 00:00:00+00'::timestamptz + g * interval '1 day 1 hour 1.000001 second',
       DATE '2000-01-01' + g, g / 3.0,
       g, g + 1, g + 2, g + 3, g + 4, g + 5, g + 6, g + 7, 'c' || g, NULL
  FROM generate_series(9, 1008) AS g;
-- to_jsonb under the formats payloads are written in (UTC, shortest exact floats)
SET TimeZone = 'UTC';
SET extra_float_digits = 1;
CREATE TABLE fp.expected AS SELECT id, to_jsonb(w) AS j FROM fp.wide AS w;
RESET TimeZone;
RESET extra_float_digits;
SELECT count(*) AS events,
       count(*) FILTER (WHERE e.new = x.j) AS same_value,
       count(*) FILTER (WHERE e.new::text = x.j::text) AS same_text,
       count(*) FILTER (WHERE pg_column_size(e.new) = pg_column_size(x.j)) AS same_size
  FROM fp.ev AS e JOIN fp.expected AS x ON x.id = (e.new ->> 'id')::int;
SELECT e.new ->> 'i8' AS i8, e.new ->> 'ts' AS ts FROM fp.ev AS e WHERE (e.new ->> 'id')::int <= 8
 ORDER BY (e.new ->> 'id')::int;

-- 2. conditions: in-process, with the SPI statement for whole-row references
CREATE TABLE fp.orders (id int PRIMARY KEY, total numeric, status text, note text);
SELECT name FROM observers.create_observer('big', 'fp.orders', '{INSERT,UPDATE}',
                                           condition => 'NEW.total > 100 AND NEW.status LIKE ''p%''');
SELECT name FROM observers.create_observer('gone', 'fp.orders', '{DELETE}', condition => 'OLD.total > 100');
SELECT name FROM observers.create_observer('moved', 'fp.orders', '{UPDATE}',
                                           condition => 'NEW.total IS DISTINCT FROM OLD.total');
SELECT name FROM observers.create_observer('always', 'fp.orders', '{INSERT}', condition => 'true');
SELECT name FROM observers.create_observer('never', 'fp.orders', '{INSERT}', condition => 'NULL::boolean');
SELECT name FROM observers.create_observer('whole_row', 'fp.orders', '{INSERT}',
                                           condition => 'NEW IS NOT NULL');
INSERT INTO fp.orders VALUES (1, 50, 'paid', 'n'), (2, 500, 'paid', 'n'), (3, 500, 'new', NULL),
                             (4, NULL, 'paid', 'n');
UPDATE fp.orders SET status = 'pending' WHERE id = 3;
UPDATE fp.orders SET total = 5 WHERE id = 2;
DELETE FROM fp.orders WHERE id IN (2, 3);
SELECT observer, op, new ->> 'id' AS new_id, old ->> 'id' AS old_id, changed
  FROM fp.ev WHERE observer <> 'wide' ORDER BY id;

-- a condition calling a user function: EXECUTE is checked as the capture role at every capture
GRANT USAGE ON SCHEMA fp TO PUBLIC;
CREATE FUNCTION fp.big_enough(numeric) RETURNS boolean LANGUAGE sql IMMUTABLE
    AS $$ SELECT $1 > 1000 $$;
SELECT name FROM observers.create_observer('udf', 'fp.orders', '{INSERT}',
                                           condition => 'fp.big_enough(NEW.total)');
INSERT INTO fp.orders VALUES (10, 5000, 'new', NULL);
REVOKE EXECUTE ON FUNCTION fp.big_enough(numeric) FROM PUBLIC;
INSERT INTO fp.orders VALUES (11, 5000, 'new', NULL);
GRANT EXECUTE ON FUNCTION fp.big_enough(numeric) TO PUBLIC;
INSERT INTO fp.orders VALUES (12, 5000, 'new', NULL);
SELECT observer, new ->> 'id' AS new_id FROM fp.ev WHERE observer = 'udf' ORDER BY id;
-- the function is dropped: compiling the condition again fails at the next capture; the error
-- names the observer and the writer's session keeps its own settings
DROP FUNCTION fp.big_enough(numeric);
SET TimeZone = 'Asia/Kolkata';
INSERT INTO fp.orders VALUES (13, 5000, 'new', NULL);
SHOW TimeZone;
RESET TimeZone;
SELECT observers.drop_observer('udf');

-- 3. changed: canonical types without output functions, text by content
CREATE TABLE fp.kinds (id int PRIMARY KEY, t text, b bpchar(5), n numeric, i int, bo boolean,
                       ts timestamptz, u uuid, f float8, big text);
ALTER TABLE fp.kinds ALTER big SET STORAGE main;
SELECT name FROM observers.create_observer('kinds', 'fp.kinds', '{UPDATE}');
INSERT INTO fp.kinds VALUES (1, 'a', 'ab', 1.0, 1, true, '2026-01-01 00:00+00',
                             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1.5, repeat('z', 5000));
UPDATE fp.kinds SET t = 'a' WHERE id = 1;
UPDATE fp.kinds SET t = 'b', n = 1.00 WHERE id = 1;
UPDATE fp.kinds SET b = 'ab  ' WHERE id = 1;
UPDATE fp.kinds SET i = 2, bo = false, ts = '2026-01-01 00:00:00.000001+00' WHERE id = 1;
UPDATE fp.kinds SET u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', f = 'NaN' WHERE id = 1;
UPDATE fp.kinds SET f = 'NaN'::float8 * -1 WHERE id = 1;
UPDATE fp.kinds SET big = repeat('z', 4999) || 'z' WHERE id = 1;
UPDATE fp.kinds SET big = repeat('z', 4999) || 'y' WHERE id = 1;
UPDATE fp.kinds SET t = NULL WHERE id = 1;
UPDATE fp.kinds SET t = NULL WHERE id = 1;
-- numerics by their bytes when both are in the short format: the same value and scale is
-- unchanged, another scale is a change (1.00 -> 1.000 prints differently), NaN is its own form;
-- a long-format value (weight beyond the short format) through the output function
UPDATE fp.kinds SET n = n * 1 WHERE id = 1;
UPDATE fp.kinds SET n = 1.000 WHERE id = 1;
UPDATE fp.kinds SET n = 'NaN' WHERE id = 1;
UPDATE fp.kinds SET n = 'NaN' WHERE id = 1;
UPDATE fp.kinds SET n = 1e300 WHERE id = 1;
UPDATE fp.kinds SET n = n * 1 WHERE id = 1;
UPDATE fp.kinds SET n = n + 1 WHERE id = 1;
UPDATE fp.kinds SET n = -12345678901234567890.5 WHERE id = 1;
UPDATE fp.kinds SET n = -12345678901234567890.50 WHERE id = 1;
SELECT row_number() OVER (ORDER BY id) AS "update", changed FROM fp.ev WHERE observer = 'kinds'
 ORDER BY id;

-- 4. A capture nested in another one: a cast to json (user code, run while the payload is
-- built) writes to the observed table itself. The nested capture reads the transition table and
-- queues its event with slots of its own: the outer statement's queued events are all written
-- (a nested writer that reused the backend's pooled slots overwrote them: event 1 was lost and
-- the nested event written twice), each event once, with distinct ids.
CREATE TYPE fp.mood AS ENUM ('calm', 'loud');
CREATE TABLE fp.nest (id int, m fp.mood);
CREATE FUNCTION fp.mood_json(fp.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fp.nest VALUES (-1, NULL);
    RETURN to_json($1::text || '!');
END $$;
CREATE CAST (fp.mood AS json) WITH FUNCTION fp.mood_json(fp.mood);
GRANT USAGE ON SCHEMA fp TO PUBLIC;     -- the cast runs as observers_capture
GRANT INSERT ON fp.nest TO PUBLIC;
SELECT name FROM observers.create_observer('nest', 'fp.nest', '{INSERT,UPDATE}');
INSERT INTO fp.nest VALUES (1, 'calm'), (2, 'loud'), (3, NULL);
INSERT INTO fp.nest VALUES (4, 'calm');
UPDATE fp.nest SET id = id + 10 WHERE id IN (1, 2);
SELECT e.op, e.new, e.old, e.changed FROM observers.event AS e
  JOIN observers.observer AS o ON o.id = e.observer_id AND o.name = 'nest' ORDER BY e.id;
SELECT count(*) AS events, count(DISTINCT e.id) AS distinct_ids FROM observers.event AS e
  JOIN observers.observer AS o ON o.id = e.observer_id AND o.name = 'nest';
SELECT observers.drop_observer('nest');
DROP CAST (fp.mood AS json);

-- 5. The triggers carry only the observer id; the condition is read from the registry with the
-- latest snapshot. A REPEATABLE READ transaction that began before the observer was replaced
-- uses the new condition (reading the registry with its own snapshot would cache the old one
-- under the new trigger, for the life of the backend).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
CREATE TABLE fp.rr (v int);
GRANT ALL ON fp.rr TO PUBLIC;
SELECT name FROM observers.create_observer('rr', 'fp.rr', '{INSERT}', condition => 'NEW.v > 10');
SELECT dblink_connect('rr',
         format('host=%s port=%s dbname=%s user=%s',
                coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
                current_setting('port'), current_database(), current_user));
SELECT dblink_exec('rr', 'BEGIN ISOLATION LEVEL REPEATABLE READ');
SELECT n >= 0 AS snapshot_taken FROM dblink('rr', 'SELECT count(*) FROM observers.observer') AS t(n bigint);
SELECT name FROM observers.create_observer('rr', 'fp.rr', '{INSERT}', condition => 'NEW.v > 100', replace => true);
SELECT dblink_exec('rr', 'INSERT INTO fp.rr VALUES (50), (500)');
SELECT dblink_exec('rr', 'COMMIT');
SELECT dblink_disconnect('rr');
SELECT e.new FROM observers.event AS e
  JOIN observers.observer AS o ON o.id = e.observer_id AND o.name = 'rr' ORDER BY e.id;
SELECT observers.drop_observer('rr');

-- 6. Outbox rows are formed by capture/tuple.rs, not heap_form_tuple. With
-- observers.verify_tuples on, every row is also formed by heap_form_tuple and an error is raised
-- if the two differ in any byte. Every shape: 1-row and multi-row statements; INSERT (old and
-- changed NULL), UPDATE (all set), DELETE (new and changed NULL); payloads under 127 bytes
-- (1-byte varlena header), over it (4-byte header, int-aligned), and over 2 kB (toasted when the
-- row is inserted); a change whose changed list is empty.
SET observers.verify_tuples = on;
CREATE TABLE fp.shapes (id int PRIMARY KEY, t text);
GRANT ALL ON fp.shapes TO PUBLIC;
SELECT name FROM observers.create_observer('shapes', 'fp.shapes');
INSERT INTO fp.shapes VALUES (1, 'a');
INSERT INTO fp.shapes VALUES (2, repeat('b', 200)), (3, repeat('c', 5000)), (4, NULL);
UPDATE fp.shapes SET t = repeat('d', 120) WHERE id = 1;
UPDATE fp.shapes SET t = t WHERE id = 2;
UPDATE fp.shapes SET t = upper(t) WHERE id IN (3, 4);
DELETE FROM fp.shapes WHERE id = 1;
DELETE FROM fp.shapes;
SELECT e.op, coalesce(e.new, e.old)->>'id' AS row_id, e.changed,
       length(e.new->>'t') AS new_t_len, left(e.new->>'t', 2) AS new_t,
       length(e.old->>'t') AS old_t_len, left(e.old->>'t', 2) AS old_t
  FROM observers.event AS e
  JOIN observers.observer AS o ON o.id = e.observer_id AND o.name = 'shapes'
 ORDER BY e.id;
SELECT observers.drop_observer('shapes');
RESET observers.verify_tuples;

DROP SCHEMA fp CASCADE;
