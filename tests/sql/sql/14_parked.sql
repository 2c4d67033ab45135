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

-- park three pairs for two destinations
SELECT observers.park_add('g', 1, 10, 1, 0, 'webhook', 'evt_10_0', '2026-11-29', 'http://a:80',
                          '{"id": 10, "observer": "o"}', 2, 'HTTP 503') > 0 AS parked;
SELECT observers.park_add('g', 1, 11, 1, 0, 'webhook', 'evt_11_0', '2026-11-29', 'http://a:80',
                          '{"id": 11}', 0, NULL) > 0 AS parked;
SELECT observers.park_add('g', 1, 12, 1, 0, 'webhook', 'evt_12_0', '2026-11-29', 'http://b:80',
                          '{"id": 12}', 1, 'timeout after 5s') > 0 AS parked;
-- parking the same pair again keeps one row and the larger attempt count
SELECT observers.park_add('g', 1, 10, 1, 0, 'webhook', 'evt_10_0', '2026-11-29', 'http://a:80',
                          '{"id": 10, "observer": "o"}', 1, NULL) > 0 AS parked_again;
SELECT event_id, destination, attempts, last_error, body FROM observers.parked ORDER BY id;

-- fenced: a stale epoch is refused
SELECT try($$SELECT observers.park_add('g', 7, 13, 1, 0, 'webhook', 'evt_13_0', '2026-11-29', 'http://a:80', '{}', 0, NULL)$$);
-- bad input
SELECT try($$SELECT observers.park_add('g', 1, 13, 1, 0, 'webhook', 'evt_13_0', '2026-11-29', '', '{}', 0, NULL)$$);

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
