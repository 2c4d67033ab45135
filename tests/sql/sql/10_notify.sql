-- Wake-up notifications: at most one NOTIFY observers_wakeup per backend per
-- observers.notify_interval, none when nothing was captured, none when the interval is 0, and
-- a notification lost to a rollback does not silence the next capture.
-- Two extra sessions through dblink: a listener and a writer with a fresh backend.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;

CREATE TABLE orders (id int PRIMARY KEY, total int);
SELECT name FROM observers.create_observer('big', 'orders', '{INSERT}', condition => 'NEW.total > 100');

CREATE FUNCTION connstr() RETURNS text LANGUAGE sql AS $$
    SELECT format('host=%s port=%s dbname=%s user=%s',
                  coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
                  current_setting('port'), current_database(), current_user)
$$;
-- notifications received by the listener since the last call (waits until one arrives or
-- the timeout passes, so a missing notification costs the timeout)
CREATE FUNCTION received(p_timeout interval DEFAULT '2 seconds') RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_deadline timestamptz := clock_timestamp() + p_timeout;
    v_n bigint := 0;
    v_got bigint;
BEGIN
    LOOP
        SELECT count(*) INTO v_got FROM dblink_get_notify('listener') WHERE notify_name = 'observers_wakeup';
        v_n := v_n + v_got;
        EXIT WHEN v_n > 0 OR clock_timestamp() > v_deadline;
        PERFORM pg_sleep(0.02);
    END LOOP;
    -- collect stragglers of the same burst
    PERFORM pg_sleep(0.1);
    SELECT v_n + count(*) INTO v_n FROM dblink_get_notify('listener') WHERE notify_name = 'observers_wakeup';
    RETURN v_n;
END
$$;
SELECT dblink_connect('listener', connstr());
SELECT dblink_exec('listener', 'LISTEN observers_wakeup');

-- a capture notifies once the transaction commits
SELECT dblink_connect('writer', connstr());
SELECT dblink_exec('writer', 'SET observers.notify_interval = ''1h''');
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (1, 500)');
SELECT received() AS first_capture;
-- within the interval: no second notification, the outbox still gets the event
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (2, 500)');
SELECT received('300 ms') AS within_interval;
SELECT count(*) AS events FROM observers.event;
SELECT dblink_disconnect('writer');

-- nothing captured (condition false): no notification
SELECT dblink_connect('writer', connstr());
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (3, 5)');
SELECT received('300 ms') AS nothing_captured;
-- observers.notify_interval = 0: never
SELECT dblink_exec('writer', 'SET observers.notify_interval = 0');
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (4, 500)');
SELECT received('300 ms') AS disabled;
SELECT dblink_disconnect('writer');

-- a notification discarded by ROLLBACK does not silence the next capture
SELECT dblink_connect('writer', connstr());
SELECT dblink_exec('writer', 'SET observers.notify_interval = ''1h''');
SELECT dblink_exec('writer', 'BEGIN');
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (5, 500)');
SELECT dblink_exec('writer', 'ROLLBACK');
SELECT received('300 ms') AS rolled_back;
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (6, 500)');
SELECT received() AS after_rollback;
SELECT dblink_disconnect('writer');
-- ... nor does one discarded by ROLLBACK TO SAVEPOINT
SELECT dblink_connect('writer', connstr());
SELECT dblink_exec('writer', 'SET observers.notify_interval = ''1h''');
SELECT dblink_exec('writer', 'BEGIN');
SELECT dblink_exec('writer', 'SAVEPOINT s');
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (7, 500)');
SELECT dblink_exec('writer', 'ROLLBACK TO SAVEPOINT s');
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (8, 500)');
SELECT dblink_exec('writer', 'COMMIT');
SELECT received() AS after_savepoint_rollback;
-- a released savepoint keeps its notification
SELECT dblink_disconnect('writer');
SELECT dblink_connect('writer', connstr());
SELECT dblink_exec('writer', 'SET observers.notify_interval = ''1h''');
SELECT dblink_exec('writer', 'BEGIN');
SELECT dblink_exec('writer', 'SAVEPOINT s');
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (9, 500)');
SELECT dblink_exec('writer', 'RELEASE SAVEPOINT s');
SELECT dblink_exec('writer', 'COMMIT');
SELECT received() AS released_savepoint;
SELECT dblink_disconnect('writer');

-- at most one notifying commit per database at a time: while another transaction holds the
-- wake-up lock (what a notifying commit holds until it completes), a capture commits without
-- waiting and without notifying; its next commit notifies again
SELECT dblink_connect('holder', connstr());
SELECT dblink_exec('holder', 'BEGIN');
SELECT dblink_exec('holder', 'SELECT pg_advisory_xact_lock(1868723058, 1)');
SELECT dblink_connect('writer', connstr());
SELECT dblink_exec('writer', 'SET observers.notify_interval = ''1h''');
SELECT dblink_exec('writer', 'SET lock_timeout = ''5s''');
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (10, 500)');
SELECT received('300 ms') AS while_lock_held;
SELECT dblink_exec('holder', 'COMMIT');
SELECT dblink_exec('writer', 'INSERT INTO orders VALUES (11, 500)');
SELECT received() AS after_lock_released;
SELECT dblink_disconnect('writer');
SELECT dblink_disconnect('holder');

SELECT count(*) AS events FROM observers.event;
SELECT dblink_disconnect('listener');
DROP TABLE orders;
DROP FUNCTION received(interval);
DROP FUNCTION connstr();
