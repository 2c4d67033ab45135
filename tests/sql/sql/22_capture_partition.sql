-- The capture writer remembers the partition of observers.event it wrote last, with its time
-- range, and next time locks only that partition, not observers.event (capture/writer.rs). A
-- partition detached, dropped or attached by another session must be noticed at once: every
-- event lands where PostgreSQL's own routing would put it. The writes come from a second session
-- (dblink) that keeps its memory between the statements.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
CREATE TABLE t (id int);
SELECT name FROM observers.create_observer('o1', 't');

-- today's partition (its name holds the date) and where each event of t is, dates masked
CREATE FUNCTION today_partition() RETURNS text LANGUAGE sql AS $$
    SELECT 'observers.' || observers._partition_name((now() AT TIME ZONE 'UTC')::date)
$$;
CREATE FUNCTION landed(p_rel regclass DEFAULT 'observers.event')
RETURNS TABLE (row_id int, partition text) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT (e.new ->> ''id'')::int, regexp_replace(e.tableoid::regclass::text, ''event_p\d{8}'', ''event_pYYYYMMDD'')
           FROM %s AS e ORDER BY e.id', p_rel);
END
$$;
SELECT dblink_connect('writer',
         format('host=%s port=%s dbname=%s user=%s',
                coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
                current_setting('port'), current_database(), current_user));

-- the first capture routes through observers.event, the second one uses the remembered partition
SELECT dblink_exec('writer', 'INSERT INTO t VALUES (1)');
SELECT dblink_exec('writer', 'INSERT INTO t VALUES (2)');
SELECT * FROM landed();

-- another session detaches today's partition: the writer must not go on writing into the
-- detached table; today's events now belong to the DEFAULT partition
SELECT today_partition() AS today \gset
ALTER TABLE observers.event DETACH PARTITION :today;
SELECT dblink_exec('writer', 'INSERT INTO t VALUES (3)');
SELECT * FROM landed();
SELECT * FROM landed(:'today');

-- the partition comes back (its day's rows moved out of DEFAULT first, as ATTACH requires):
-- the writer, which wrote to DEFAULT last, routes again and finds it
BEGIN;
DELETE FROM observers.event_default;
DO $$
BEGIN
    EXECUTE format('ALTER TABLE observers.event ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                   today_partition(),
                   to_char((now() AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD') || ' 00:00:00+00',
                   to_char((now() AT TIME ZONE 'UTC')::date + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
END
$$;
COMMIT;
SELECT dblink_exec('writer', 'INSERT INTO t VALUES (4)');
SELECT dblink_exec('writer', 'INSERT INTO t VALUES (5)');
SELECT * FROM landed();

-- dropped while remembered: the next capture writes to DEFAULT, no error
ALTER EXTENSION pg_observers DROP TABLE :today;
DROP TABLE :today;
SELECT dblink_exec('writer', 'INSERT INTO t VALUES (6)');
SELECT * FROM landed();

-- maintain() re-creates nothing for today (its day has rows in DEFAULT) and the writer keeps
-- writing to DEFAULT
SELECT regexp_replace(observers.maintain(), 'event_p\d{8}', 'event_pYYYYMMDD', 'g') ~ 'event_pYYYYMMDD \(its day has rows in event_default\)' AS today_skipped;
SELECT dblink_exec('writer', 'INSERT INTO t VALUES (7)');
SELECT * FROM landed();

SELECT dblink_disconnect('writer');
DROP TABLE t;
DROP FUNCTION today_partition();
DROP FUNCTION landed(regclass);
