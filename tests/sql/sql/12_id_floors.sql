-- Id floors (batch_open): a batch starts at the floor recorded by an earlier batch_open, not at
-- id 0. The floor must never pass an event of a transaction that is still running, however
-- many batches go by while it runs (more than the 32 pairs the history keeps), and it must
-- actually move up when nothing old is running.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;

CREATE TABLE items (id int PRIMARY KEY, note text);
SELECT name FROM observers.create_observer('items_obs', 'items', '{INSERT}');
SELECT observers.lease_acquire('default', 'w1', '1 hour') AS epoch;

-- one batch cycle in its own transaction, as the worker runs it: returns the events delivered
CREATE FUNCTION cycle() RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE b record;
BEGIN
    SELECT * INTO b FROM observers.batch_open('default', 1);
    RETURN QUERY SELECT (f.body::jsonb -> 'new' ->> 'note')
                   FROM observers.batch_fetch('default', b.snap_lo, b.snap_hi, b.last_id, b.max_id, 1000) AS f
                  ORDER BY f.id;
    PERFORM observers.batch_close('default', 1);
END
$$;

-- the late transaction takes the smallest id of everything that follows
SELECT dblink_connect('late',
         format('host=%s port=%s dbname=%s user=%s',
                coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
                current_setting('port'), current_database(), current_user));
SELECT dblink_exec('late', 'BEGIN');
SELECT dblink_exec('late', 'INSERT INTO items VALUES (0, ''late'')');

-- 40 batches of one committed event each while it runs (\gexec sends each cell as its own
-- statement, so each insert and each cycle is its own transaction, as with the worker)
SELECT format('INSERT INTO items VALUES (%s, %L)', g, 'e' || g),
       'SELECT string_agg(n, '','') AS delivered FROM cycle() AS n'
  FROM generate_series(1, 40) AS g \gexec

-- the history is capped, and the floor is still below the late event
SELECT array_length(floor_xids, 1) = 32 AS history_capped_at_32 FROM observers.checkpoint;
SELECT last_id < (SELECT min(id) FROM observers.event) AS floor_below_late_event
  FROM observers.batch_open('default', 1);
SELECT observers.batch_close('default', 1);

SELECT dblink_exec('late', 'COMMIT');
SELECT dblink_disconnect('late');
-- delivered now, not skipped
SELECT string_agg(n, ',') AS delivered FROM cycle() AS n;

-- with nothing old running any more, the floor moves up: the next batch starts above every
-- event delivered so far
INSERT INTO items VALUES (41, 'e41');
SELECT string_agg(n, ',') AS delivered FROM cycle() AS n;
INSERT INTO items VALUES (42, 'e42');
SELECT string_agg(n, ',') AS delivered FROM cycle() AS n;
INSERT INTO items VALUES (43, 'e43');
SELECT b.last_id >= (SELECT max(id) FROM observers.event WHERE new ->> 'note' = 'e41') AS floor_moved_up,
       b.max_id = (SELECT max(id) FROM observers.event) AS batch_ends_at_newest
  FROM observers.batch_open('default', 1) AS b;
-- status(), checkpoint_show() and maintain() start at observers._id_floor(checkpoint)
-- (15_id_floor.sql): the same floor batch_open chose, and not 0
SELECT observers._id_floor(k) = k.last_id AS same_floor_as_batch_open, k.last_id > 0 AS above_zero
  FROM observers.checkpoint AS k WHERE k.group_name = 'default';

SELECT observers.batch_close('default', 1);

-- the self-check: a floor above events of the batch (forged here) is reported, not trusted
INSERT INTO items VALUES (50, 'e50'), (51, 'e51');
UPDATE observers.checkpoint
   SET floor_xids = '{1}', floor_seqs = ARRAY[(SELECT max(id) FROM observers.event)];
SELECT string_agg(n, ',') AS delivered_despite_forged_floor FROM cycle() AS n;

DROP FUNCTION cycle();
DROP TABLE items;
