-- Parked pairs (destination's circuit breaker open): park_add is fenced and idempotent per
-- pair, park_fetch skips open destinations and pairs in flight, park_finish deletes or moves
-- the pair to the dead-letter queue in one transaction.
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
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '\d{4}-\d\d-\d\d[ T][0-9:.+-]+', '<timestamp>', 'g');
END
$$;

SELECT observers.lease_acquire('g', 'w1', '1 minute') AS epoch;

-- one pair per call (what park1 wraps) and a batch
CREATE FUNCTION park1(epoch bigint, event_id bigint, destination text, body text, attempts int, last_error text)
RETURNS bigint LANGUAGE sql AS $$
    SELECT observers.park_add('g', epoch, ARRAY[event_id], '{1}', '{0}', '{webhook}',
                              ARRAY['evt_' || event_id || '_0'], '{2026-11-29}', ARRAY[destination],
                              ARRAY[body], ARRAY[attempts], ARRAY[last_error])
$$;
SELECT park1(1, 10, 'http://a:80', '{"id": 10, "observer": "o"}', 2, 'HTTP 503') AS parked;
SELECT observers.park_add('g', 1, '{11,12}', '{1,1}', '{0,0}', '{webhook,webhook}',
                          '{evt_11_0,evt_12_0}', '{2026-11-29,2026-11-29}', '{http://a:80,http://b:80}',
                          ARRAY['{"id": 11}', '{"id": 12}'], '{0,1}', ARRAY[NULL, 'timeout after 5s']) AS parked;
-- parking the same pair again keeps one row and the larger attempt count
SELECT park1(1, 10, 'http://a:80', '{"id": 10, "observer": "o"}', 1, NULL) AS parked_again;
-- the same pair twice in one batch is one row
SELECT observers.park_add('g', 1, '{13,13}', '{1,1}', '{0,0}', '{webhook,webhook}',
                          '{evt_13_0,evt_13_0}', '{2026-11-29,2026-11-29}', '{http://c:80,http://c:80}',
                          '{"{}","{}"}', '{1,3}', '{x,y}') AS parked_twice;
SELECT attempts, last_error FROM observers.parked WHERE event_id = 13;
DELETE FROM observers.parked WHERE event_id = 13;
SELECT event_id, destination, attempts, last_error, body FROM observers.parked ORDER BY id;

-- fenced: a stale epoch is refused
SELECT try($$SELECT park1(7, 14, 'http://a:80', '{}', 0, NULL)$$);
-- bad input: an empty destination, arrays of different lengths
SELECT try($$SELECT park1(1, 14, '', '{}', 0, NULL)$$);
SELECT try($$SELECT observers.park_add('g', 1, '{14,15}', '{1}', '{0}', '{webhook}', '{w}', '{2026-11-29}', '{d}', '{b}', '{0}', '{NULL}')$$);

-- fetch: everything, then without destination a, then without a pair in flight
SELECT event_id, webhook_id, day, destination, attempts FROM observers.park_fetch('g', '{}', '{}', 10);
SELECT event_id FROM observers.park_fetch('g', '{http://a:80}', '{}', 10);
SELECT event_id FROM observers.park_fetch('g', NULL, (SELECT array_agg(id) FROM observers.parked WHERE event_id = 10), 10);
SELECT count(*) FROM observers.park_fetch('other-group', '{}', '{}', 10);

-- finish: 11 delivered (row gone), 12 failed for good (moved to the DLQ with the body as jsonb)
SELECT observers.park_finish('g', 1, (SELECT id FROM observers.parked WHERE event_id = 11), NULL, 0, NULL);
SELECT observers.park_finish('g', 1, (SELECT id FROM observers.parked WHERE event_id = 12), 'HTTP 404 Not Found', 3, 404);
SELECT event_id FROM observers.parked ORDER BY id;
SELECT event_id, action_type, webhook_id, payload, error, attempts, last_status FROM observers.dlq;
-- finishing a pair that is gone does nothing; a stale epoch is refused
SELECT observers.park_finish('g', 1, 999999, 'x', 1, NULL);
SELECT try($$SELECT observers.park_finish('g', 2, 1, NULL, 0, NULL)$$);

-- observers.breakers: what workers report in their heartbeats, with the parked pairs
SELECT observers.heartbeat('g', 'w1', '{"breakers": {"http://a:80": {"state": "open", "opened": 2}, "http://c:80": {"state": "closed", "opened": 0}}}');
SELECT observers.heartbeat('g', 'w2', '{"breakers": null}');
SELECT group_name, worker_id, destination, state, times_opened, parked FROM observers.breakers ORDER BY destination;
-- operators read it; an ordinary role does not
CREATE ROLE parked_admin_test LOGIN IN ROLE observers_admin;
CREATE ROLE parked_nobody_test LOGIN;
SET ROLE parked_admin_test;
SELECT count(*) AS breakers_visible FROM observers.breakers;
SET ROLE parked_nobody_test;
SELECT count(*) FROM observers.breakers;
RESET ROLE;
DROP ROLE parked_admin_test;
DROP ROLE parked_nobody_test;
