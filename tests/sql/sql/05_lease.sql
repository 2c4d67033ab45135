-- Leader lease: acquire, renew, contention, takeover after expiry, release; fencing.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

-- run a statement, return 'ok' or 'SQLSTATE: message' (timestamps masked)
CREATE FUNCTION try(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '\d{4}-\d\d-\d\d[ T][0-9:.+-]+', '<timestamp>', 'g');
END
$$;
CREATE VIEW lease AS
SELECT group_name, worker_id, epoch, expires_at > clock_timestamp() AS valid,
       renewed_at >= acquired_at AS renewed_after_acquired
  FROM observers.leader_lease ORDER BY group_name;

-- first acquisition: epoch 1
SELECT observers.lease_acquire('g', 'w1', '1 minute');
-- renewal by the holder: same epoch
SELECT observers.lease_acquire('g', 'w1', '1 minute');
SELECT * FROM lease;
-- another worker while the lease is valid: NULL
SELECT observers.lease_acquire('g', 'w2', '1 minute') IS NULL AS w2_refused;
-- groups are independent
SELECT observers.lease_acquire('other', 'w2', '1 minute');

-- takeover after expiry: epoch + 1
SELECT observers.lease_acquire('g', 'w1', '1 millisecond');
SELECT pg_sleep(0.05);
SELECT observers.lease_acquire('g', 'w2', '1 minute');
SELECT * FROM lease;
-- the old holder is refused now
SELECT observers.lease_acquire('g', 'w1', '1 minute') IS NULL AS w1_refused;

-- fencing: the old epoch is refused by every fenced function
SELECT try($$SELECT observers.batch_open('g', 1)$$);
SELECT try($$SELECT observers.checkpoint_save('g', 1, 0)$$);
SELECT try($$SELECT observers.batch_close('g', 1)$$);
SELECT try($$SELECT observers.dlq_add('g', 1, 1, 1, 0, 'webhook', 'evt_1_0', '{}', 'boom', 1, 500)$$);
SELECT try($$SELECT observers.batch_open('g', NULL)$$);
-- the current epoch is accepted
SELECT try($$SELECT observers.batch_open('g', 2)$$);
-- a group without lease is fenced too
SELECT try($$SELECT observers.batch_open('nolease', 1)$$);
-- an expired lease fences its own holder
UPDATE observers.leader_lease SET expires_at = clock_timestamp() - interval '1 second' WHERE group_name = 'g';
SELECT try($$SELECT observers.batch_open('g', 2)$$);
-- and the holder re-acquiring an expired lease gets a new epoch (its old epoch stays fenced)
SELECT observers.lease_acquire('g', 'w2', '1 minute');
SELECT try($$SELECT observers.checkpoint_save('g', 2, 0)$$);

-- release: only by the holder with its epoch; expires the lease now
SELECT observers.lease_release('g', 'w1', 3) AS wrong_worker,
       observers.lease_release('g', 'w2', 2) AS wrong_epoch;
SELECT observers.lease_release('g', 'w2', 3) AS released;
SELECT observers.lease_release('g', 'w2', 3) AS released_twice;
SELECT * FROM lease;
SELECT try($$SELECT observers.batch_close('g', 3)$$);
-- after a release anyone takes over at once, with a new epoch
SELECT observers.lease_acquire('g', 'w1', '1 minute');

-- bad arguments
SELECT try($$SELECT observers.lease_acquire('g', 'w1', '0 seconds')$$);
SELECT try($$SELECT observers.lease_acquire('g', 'w1', '-1 minute')$$);
SELECT try($$SELECT observers.lease_acquire('g', 'w1', NULL)$$);
SELECT try($$SELECT observers.lease_acquire('', 'w1', '1 minute')$$);
SELECT try($$SELECT observers.lease_acquire('g', NULL, '1 minute')$$);
SELECT observers.lease_release('g', NULL, 4) AS release_null_worker;

-- SQLSTATE OB001 can be caught by name-less handlers too
DO $$
BEGIN
    PERFORM observers.batch_open('g', 1);
EXCEPTION WHEN SQLSTATE 'OB001' THEN
    RAISE NOTICE 'caught fencing error';
END
$$;

DROP VIEW lease;
DROP FUNCTION try(text);
