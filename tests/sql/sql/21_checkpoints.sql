-- Checkpoint management (issue 10): observers.checkpoint_show() shows each group's cursor and
-- backlog; observers.checkpoint_skip() skips a group's backlog after an incident (dry run by
-- default), fences a leader in the middle of a batch so that it cannot move the cursor back
-- over the skip, leaves running transactions to be delivered normally, and reports the id
-- ranges that observers.replay() can deliver again.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;

CREATE OR REPLACE FUNCTION try(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '\d{4}-\d\d-\d\d[ T][0-9:.+-]+', '<timestamp>', 'g');
END
$$;
-- checkpoint_show() without snapshots, txids or times
CREATE OR REPLACE VIEW shown AS
SELECT group_name, snap_lo IS NOT NULL AS has_cursor, batch_open, last_id, max_id, epoch,
       backlog, oldest_undelivered_age IS NOT NULL AS has_age
  FROM observers.checkpoint_show();

CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, total int);
CREATE TABLE shop.lines (order_id int, sku text, PRIMARY KEY (order_id, sku));
SELECT name FROM observers.create_observer('orders', 'shop.orders', group_name => 'g1');
SELECT name FROM observers.create_observer('lines', 'shop.lines', group_name => 'g1',
    actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/lines"}]');
SELECT name FROM observers.create_observer('orders_g2', 'shop.orders', group_name => 'g2');

-- groups without checkpoint: every captured event is backlog
INSERT INTO shop.orders VALUES (1, 10), (2, 20);     -- ids 1..4 (orders, orders_g2)
INSERT INTO shop.lines VALUES (1, 'a'), (1, 'b');    -- ids 5, 6
SELECT * FROM shown;
SELECT group_name FROM observers.checkpoint_show('g2');
SELECT count(*) AS unknown_group_rows FROM observers.checkpoint_show('nope');

-- a leader opens a batch of g1 and saves part of it
SELECT observers.lease_acquire('g1', 'w1', '1 hour') AS epoch;
SELECT last_id, max_id FROM observers.batch_open('g1', 1);
SELECT observers.checkpoint_save('g1', 1, 3);
SELECT * FROM shown;

-- the dry run (the default) reports and changes nothing: not the cursor, not the lease
SELECT * FROM observers.checkpoint_skip('g1');
SELECT * FROM shown;
SELECT epoch FROM observers.leader_lease WHERE group_name = 'g1';

-- a transaction still running when the skip happens is not skipped
SELECT dblink_connect('late', format('host=%s port=%s dbname=%s user=%s',
         coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
         current_setting('port'), current_database(), current_user)) AS late;
SELECT dblink_exec('late', 'BEGIN');
SELECT dblink_exec('late', $$INSERT INTO shop.lines VALUES (2, 'late')$$);   -- id 7

-- the skip, as an operator (observers_admin)
CREATE ROLE skip_operator LOGIN;
GRANT observers_admin TO skip_operator;
SET ROLE skip_operator;
SELECT * FROM observers.checkpoint_skip('g1', dry_run => false);
RESET ROLE;
SELECT * FROM shown;
-- the lease epoch was bumped: the leader's batch is fenced, it cannot move the cursor back
SELECT epoch FROM observers.leader_lease WHERE group_name = 'g1';
SELECT try($$SELECT observers.checkpoint_save('g1', 1, 6)$$);
SELECT try($$SELECT observers.batch_close('g1', 1)$$);
-- it renews its lease (same worker: it keeps it, with the new epoch) and opens a new batch:
-- empty, the skipped events are done
SELECT observers.lease_acquire('g1', 'w1', '1 hour') AS epoch;
SELECT last_id, max_id FROM observers.batch_open('g1', 2);
SELECT observers.batch_close('g1', 2);
-- the late transaction commits after the skip: its event is delivered normally
SELECT dblink_exec('late', 'COMMIT');
SELECT dblink_disconnect('late');
INSERT INTO shop.orders VALUES (3, 30);              -- ids 8, 9
SELECT * FROM shown;
SELECT b.id FROM observers.checkpoint AS c,
       observers.batch_open('g1', 2) AS o,
       observers.batch_fetch('g1', o.snap_lo, o.snap_hi, 0, o.max_id, 100) AS b
 WHERE c.group_name = 'g1' ORDER BY b.id;
-- g2 was not touched
SELECT * FROM observers.checkpoint_skip('g2');

-- what was skipped stays replayable: the reported range, queued in observers.parked
SELECT observers.replay('lines', 5, 6) AS queued;
SELECT observer_id, event_id, reason FROM observers.parked ORDER BY event_id;

-- a group without checkpoint and a leader: the skip creates its checkpoint
SELECT * FROM observers.checkpoint_skip('g2', false);
SELECT * FROM shown WHERE group_name = 'g2';

-- bad input
SELECT try($$SELECT * FROM observers.checkpoint_skip('nope', false)$$);
SELECT try($$SELECT * FROM observers.checkpoint_skip('', true)$$);
SELECT try($$SELECT * FROM observers.checkpoint_skip(NULL)$$);
-- neither the worker nor PUBLIC may skip
SET ROLE observers_worker;
SELECT try($$SELECT * FROM observers.checkpoint_skip('g1', false)$$);
SELECT try($$SELECT * FROM observers.checkpoint_show()$$);
RESET ROLE;
DROP ROLE skip_operator;
SET client_min_messages = warning;
DROP SCHEMA shop CASCADE;
RESET client_min_messages;
