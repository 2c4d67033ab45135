-- The snapshot cursor: batch_open / batch_fetch / checkpoint_save / batch_close, the webhook
-- body, paging, groups, and the late-commit case (a second session through dblink).
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;

CREATE FUNCTION try(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
-- the checkpoint without raw snapshots: is a batch open, how far, up to which id
CREATE VIEW cp AS
SELECT group_name, snap_lo = '1:1:'::text AS from_start, snap_hi IS NOT NULL AS batch_open,
       last_id, max_id, epoch
  FROM (SELECT group_name, snap_lo::text, snap_hi, last_id, max_id, epoch FROM observers.checkpoint) AS c
 ORDER BY group_name;
-- the open batch of group g1, fetched as the worker does (body without txid/captured_at)
CREATE FUNCTION fetch_g1(p_after bigint, p_lim int)
RETURNS TABLE (id bigint, observer_id int, ordering_key text, body jsonb) LANGUAGE sql AS $$
    SELECT b.id, b.observer_id, b.ordering_key, b.body::jsonb - 'txid' - 'captured_at'
      FROM observers.checkpoint AS c,
           observers.batch_fetch('g1', c.snap_lo, c.snap_hi, p_after, c.max_id, p_lim) AS b
     WHERE c.group_name = 'g1'
$$;

CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, customer_id int, total numeric(10,2), status text);
CREATE TABLE shop.lines (order_id int, sku text, qty int, PRIMARY KEY (order_id, sku));
SELECT name FROM observers.create_observer('orders', 'shop.orders', ordering_key => '{customer_id}', group_name => 'g1');
SELECT name FROM observers.create_observer('lines', 'shop.lines', ordering_key => '{order_id,sku}', group_name => 'g1');
SELECT name FROM observers.create_observer('orders_g2', 'shop.orders', group_name => 'g2');
SELECT observers.lease_acquire('g1', 'w1', '1 hour') AS epoch;

-- a group without checkpoint starts from the empty snapshot; an empty batch has max_id NULL
SELECT snap_lo, snap_hi IS NOT NULL AS has_snap_hi, last_id, max_id FROM observers.batch_open('g1', 1);
SELECT * FROM cp;
SELECT count(*) FROM fetch_g1(0, 100);
-- nothing to save in an empty batch
SELECT try($$SELECT observers.checkpoint_save('g1', 1, 1)$$);
SELECT observers.batch_close('g1', 1);
SELECT * FROM cp;
-- closing twice, saving without an open batch
SELECT try($$SELECT observers.batch_close('g1', 1)$$);
SELECT try($$SELECT observers.checkpoint_save('g1', 1, 0)$$);
-- the new snap_lo is the old snap_hi
SELECT snap_lo::text <> '1:1:' AS moved FROM observers.checkpoint WHERE group_name = 'g1';

-- some changes
INSERT INTO shop.orders VALUES (1, 7, 1500.00, 'new'), (2, 8, 20.00, 'new');
INSERT INTO shop.lines VALUES (1, 'A-1', 2);
UPDATE shop.orders SET status = 'paid' WHERE id = 1;
DELETE FROM shop.lines WHERE order_id = 1;
INSERT INTO shop.orders VALUES (3, NULL, 1.00, 'new');

-- the batch: every event of g1's observers (not g2's), max_id the largest of them
SELECT snap_hi IS NOT NULL AS has_snap_hi, last_id, max_id FROM observers.batch_open('g1', 1);
SELECT id, observer_id, op FROM observers.event ORDER BY id;
-- re-opening an open batch returns the same batch (a restarted worker resumes it)
SELECT c.snap_hi::text = b.snap_hi::text AS same_snap_hi, b.last_id, b.max_id
  FROM observers.checkpoint AS c, observers.batch_open('g1', 1) AS b WHERE c.group_name = 'g1';

-- the body: the webhook JSON, keys in the documented order
SELECT id, observer_id, ordering_key, body FROM fetch_g1(0, 100);
SELECT array_agg(k ORDER BY n) AS body_keys
  FROM (SELECT body FROM observers.checkpoint AS c,
               observers.batch_fetch('g1', c.snap_lo, c.snap_hi, 0, c.max_id, 1) AS b
         WHERE c.group_name = 'g1') AS f,
       json_object_keys(f.body::json) WITH ORDINALITY AS x(k, n);
-- txid is the writing transaction's id as a JSON number, captured_at UTC with microseconds
SELECT b.id,
       (b.body::json ->> 'txid')::bigint = e.txid::text::bigint AS txid_matches,
       json_typeof(b.body::json -> 'txid') AS txid_type,
       b.body::json ->> 'captured_at' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$' AS iso_utc,
       (b.body::json ->> 'captured_at')::timestamptz = e.captured_at AS captured_matches,
       b.captured_at = e.captured_at AS column_matches
  FROM observers.checkpoint AS c,
       observers.batch_fetch('g1', c.snap_lo, c.snap_hi, 0, c.max_id, 100) AS b
  JOIN observers.event AS e ON e.id = b.id
 WHERE c.group_name = 'g1'
 ORDER BY b.id;
-- the exact text of one body
SELECT regexp_replace(regexp_replace(body, '"txid" : \d+', '"txid" : <txid>'),
                      '"captured_at" : "[^"]+"', '"captured_at" : "<captured_at>"') AS body
  FROM observers.checkpoint AS c,
       observers.batch_fetch('g1', c.snap_lo, c.snap_hi, 0, c.max_id, 1) AS b
 WHERE c.group_name = 'g1';

-- paging inside the batch by id
SELECT id FROM fetch_g1(0, 2);
SELECT id FROM fetch_g1(3, 2);
SELECT id FROM fetch_g1(6, 2);
SELECT id FROM fetch_g1(9, 2);

-- progress inside the batch: last_id only moves forward and stays inside the batch
SELECT observers.checkpoint_save('g1', 1, 3);
SELECT observers.checkpoint_save('g1', 1, 1);
SELECT last_id FROM observers.checkpoint WHERE group_name = 'g1';
SELECT try($$SELECT observers.checkpoint_save('g1', 1, 99)$$);
SELECT try($$SELECT observers.checkpoint_save('g1', 1, NULL)$$);
-- a restarted worker resumes the open batch at last_id
SELECT last_id, max_id FROM observers.batch_open('g1', 1);

-- changes committed while the batch is open belong to the next batch
INSERT INTO shop.orders VALUES (4, 9, 5.00, 'new');
SELECT id FROM fetch_g1(0, 100);
SELECT observers.checkpoint_save('g1', 1, 9);
SELECT observers.batch_close('g1', 1);
SELECT max_id FROM observers.batch_open('g1', 1);
SELECT id, body ->> 'op' AS op, body -> 'new' ->> 'id' AS order_id FROM fetch_g1(0, 100);
SELECT observers.batch_close('g1', 1);

-- the other group has its own cursor, from the start
SELECT observers.lease_acquire('g2', 'w9', '1 hour') AS epoch;
SELECT last_id, max_id FROM observers.batch_open('g2', 1);
SELECT * FROM cp;

-- LATE COMMIT: a transaction that got its id before others but commits after them is part of
-- the batch whose snap_hi first sees it committed, never skipped.
SELECT dblink_connect('late',
         format('host=%s port=%s dbname=%s user=%s',
                coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
                current_setting('port'), current_database(), current_user));
SELECT dblink_exec('late', 'BEGIN');
SELECT dblink_exec('late', 'INSERT INTO shop.orders VALUES (100, 1, 1.00, ''late'')');
INSERT INTO shop.orders VALUES (101, 1, 1.00, 'early');
SELECT id, new ->> 'status' AS status FROM observers.event WHERE observer_id = 1 AND id > 10 ORDER BY id;
-- the batch sees only the committed one; the in-progress transaction holds the smaller id
SELECT max_id FROM observers.batch_open('g1', 1);
SELECT id, body -> 'new' ->> 'status' AS status FROM fetch_g1(0, 100);
SELECT observers.checkpoint_save('g1', 1, 13);
SELECT observers.batch_close('g1', 1);
-- an id cursor would now be past the late event; the snapshot cursor is not
SELECT dblink_exec('late', 'COMMIT');
SELECT max_id FROM observers.batch_open('g1', 1);
SELECT id, body -> 'new' ->> 'status' AS status FROM fetch_g1(0, 100);
SELECT observers.batch_close('g1', 1);
-- a rolled-back late transaction simply never shows up
SELECT dblink_exec('late', 'BEGIN');
SELECT dblink_exec('late', 'INSERT INTO shop.orders VALUES (102, 1, 1.00, ''rolled back'')');
INSERT INTO shop.orders VALUES (103, 1, 1.00, 'committed');
SELECT max_id FROM observers.batch_open('g1', 1);
SELECT observers.batch_close('g1', 1);
SELECT dblink_exec('late', 'ROLLBACK');
SELECT max_id FROM observers.batch_open('g1', 1);
SELECT observers.batch_close('g1', 1);
SELECT dblink_disconnect('late');

-- events of a dropped observer are no longer delivered
INSERT INTO shop.lines VALUES (5, 'B', 1);
SELECT observers.drop_observer('lines');
SELECT max_id FROM observers.batch_open('g1', 1);
SELECT count(*) FROM fetch_g1(0, 100);
SELECT observers.batch_close('g1', 1);

DROP SCHEMA shop CASCADE;
DROP VIEW cp;
DROP FUNCTION try(text);
