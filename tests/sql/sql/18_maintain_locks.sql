-- maintain() under lock contention (its lock_timeout). A test of its own because it waits on
-- a real timeout: scripts/test-sql-timeless.sh, which runs the suite on a server whose clock is
-- moved by libfaketime, skips it (PostgreSQL's timers do not fire under libfaketime: a 50ms
-- lock_timeout waited for the lock's holder instead; docs/TESTING.md).
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

-- maintain() with partition names (they contain dates) masked
CREATE FUNCTION m() RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(observers.maintain(), 'event_p\d{8}', 'event_pYYYYMMDD', 'g')
$$;
-- drop the partition of today + p_offset days (first taking it out of the extension)
CREATE FUNCTION drop_day_partition(p_offset int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_rel text := 'observers.' || observers._partition_name((now() AT TIME ZONE 'UTC')::date + p_offset);
BEGIN
    EXECUTE format('ALTER EXTENSION pg_observers DROP TABLE %s', v_rel);
    EXECUTE format('DROP TABLE %s', v_rel);
END
$$;
CREATE TABLE t (id int);
SELECT name FROM observers.create_observer('o1', 't');
SELECT m();

-- maintain() never makes writers wait long: with a capturing transaction open, it cannot get
-- the lock that creating a partition needs within 50ms, skips it and reports it
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
SELECT drop_day_partition(5);
SELECT dblink_connect('writer',
         format('host=%s port=%s dbname=%s user=%s',
                coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
                current_setting('port'), current_database(), current_user));
SELECT dblink_exec('writer', 'BEGIN');
SELECT dblink_exec('writer', 'INSERT INTO t VALUES (1)');
SELECT m();
SELECT dblink_exec('writer', 'COMMIT');
SELECT m();
-- a concurrent maintain() does nothing
SELECT dblink_exec('writer', 'BEGIN');
SELECT dblink_exec('writer', 'LOCK TABLE observers.event IN SHARE UPDATE EXCLUSIVE MODE');
SELECT m();
SELECT dblink_exec('writer', 'ROLLBACK');
SELECT dblink_disconnect('writer');

DROP TABLE t;
DROP FUNCTION m();
DROP FUNCTION drop_day_partition(int);
