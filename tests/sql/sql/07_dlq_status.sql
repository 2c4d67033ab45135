-- Dead letters, heartbeats and status().
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

CREATE FUNCTION try(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
-- status() without the time-dependent columns
CREATE VIEW st AS
SELECT observer, group_name, table_name, enabled, backlog,
       oldest_undelivered_age IS NOT NULL AS has_oldest,
       regexp_replace(checkpoint, 'snap_(lo|hi)=\S+', 'snap_\1=<snapshot>', 'g') AS checkpoint,
       checkpoint_updated_at IS NOT NULL AS has_checkpoint_time,
       leader, lease_expires_at > now() AS lease_valid, dlq_count, last_error
  FROM observers.status();

CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, total numeric);
SELECT name FROM observers.create_observer('orders', 'shop.orders', group_name => 'g');
SELECT name FROM observers.create_observer('big', 'shop.orders', '{INSERT}', condition => 'NEW.total > 100', group_name => 'g');
SELECT name FROM observers.create_observer('audit', 'shop.orders', group_name => 'audit');

-- nothing captured, no worker yet
SELECT * FROM st;

INSERT INTO shop.orders SELECT g, g * 50 FROM generate_series(1, 4) AS g;
UPDATE shop.orders SET total = 0 WHERE id = 1;
-- no checkpoint yet: the whole outbox of an observer is its backlog
SELECT * FROM st;

-- a worker leads group g and delivers the first three events of the batch
SELECT observers.lease_acquire('g', 'w1', '1 hour');
SELECT max_id FROM observers.batch_open('g', 1);
SELECT observers.checkpoint_save('g', 1, 3);
SELECT * FROM st;

-- dead letters: fenced, a full copy of the payload, counted per observer
SELECT observers.dlq_add('g', 1, 2, 1, 0, 'webhook', 'evt_2_0', '{"id": 2}', 'HTTP 400 Bad Request', 1, 400);
SELECT observers.dlq_add('g', 1, 3, 1, 1, 'slack', NULL, '{"id": 3}', 'timeout after 5s', 8, NULL);
SELECT try($$SELECT observers.dlq_add('g', 7, 3, 1, 1, 'slack', NULL, '{"id": 3}', 'x', 1, NULL)$$);
SELECT try($$SELECT observers.dlq_add('g', 1, NULL, 1, 1, 'slack', NULL, '{}', 'x', 1, NULL)$$);
SELECT try($$SELECT observers.dlq_add('g', 1, 3, 1, 1, '', NULL, '{}', 'x', 1, NULL)$$);
SELECT try($$SELECT observers.dlq_add('g', 1, 3, 1, 1, 'webhook', NULL, '{}', NULL, 1, NULL)$$);
SELECT id, group_name, event_id, observer_id, action_index, action_type, webhook_id, payload, error,
       attempts, last_status, epoch
  FROM observers.dlq ORDER BY id;

-- the batch finished: the backlog of g's observers is empty, audit's untouched
SELECT observers.checkpoint_save('g', 1, 6);
SELECT observers.batch_close('g', 1);
SELECT * FROM st;

-- new events after the batch are backlog again
INSERT INTO shop.orders VALUES (5, 500);
SELECT observer, backlog FROM st;
-- an expired lease: no leader
UPDATE observers.leader_lease SET expires_at = now() - interval '1 minute';
SELECT observer, leader, lease_valid FROM st;

-- heartbeats: insert, then update in place
SELECT observers.heartbeat('g', 'w1', '{"version": "0.1.0", "pid": 42}');
SELECT observers.heartbeat('g', 'w1', '{"version": "0.1.0", "pid": 43}');
SELECT observers.heartbeat('g', 'w2', NULL);
SELECT group_name, worker_id, info, last_seen >= started_at AS seen FROM observers.worker ORDER BY 1, 2;
SELECT try($$SELECT observers.heartbeat('g', '', '{}')$$);

DROP SCHEMA shop CASCADE;
DROP VIEW st;
DROP FUNCTION try(text);
