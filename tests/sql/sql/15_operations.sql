-- The operators' control plane: status() columns, the dead-letter queue functions (list, show,
-- stats, retry through observers.parked, purge with filters), replay(), debug_event(), the
-- attempt log, and who may call what.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
DROP SCHEMA IF EXISTS shop CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

CREATE OR REPLACE FUNCTION try(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, total numeric, status text);
SELECT name FROM observers.create_observer('orders', 'shop.orders',
    actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/a"}, {"type": "webhook", "url": "http://127.0.0.1:9/b"}]',
    group_name => 'g');
SELECT name FROM observers.create_observer('big', 'shop.orders', '{INSERT}', condition => 'NEW.total > 100',
    actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/big"}]', group_name => 'g');
SELECT name FROM observers.create_observer('status_changes', 'shop.orders', '{UPDATE}', columns => '{status}',
    actions => '[{"type": "webhook", "url": "http://127.0.0.1:9/s"}]', group_name => 'g');
INSERT INTO shop.orders VALUES (1, 10, 'new'), (2, 500, 'new'), (3, 20, 'new');
UPDATE shop.orders SET total = 11 WHERE id = 1;
SELECT e.id - (SELECT min(id) FROM observers.event) AS rel_id, o.name, e.op, e.new->>'id' AS row
  FROM observers.event e JOIN observers.observer o ON o.id = e.observer_id ORDER BY e.id;
CREATE TEMP TABLE ev AS SELECT e.id, o.name AS observer, e.new->>'id' AS row, e.op
  FROM observers.event e JOIN observers.observer o ON o.id = e.observer_id;

-- a worker takes the group, works through one batch and dead-letters two pairs of 'orders'
SELECT observers.lease_acquire('g', 'w1', '1 minute') AS epoch;
SELECT max_id IS NOT NULL AS opened FROM observers.batch_open('g', 1);
CREATE TEMP TABLE batch AS
  SELECT f.* FROM observers.checkpoint k,
         observers.batch_fetch('g', k.snap_lo, k.snap_hi, 0, k.max_id, 100) f;
SELECT count(*) AS fetched FROM batch;
SELECT observers.dlq_add('g', 1, b.id, b.observer_id, 0, 'webhook', 'evt_' || b.id || '_0', b.body::jsonb,
                         'HTTP 500 Internal Server Error', 5, 500) IS NOT NULL AS dead_lettered
  FROM batch b JOIN ev ON ev.id = b.id WHERE ev.observer = 'orders' AND ev.op = 'INSERT' AND ev.row IN ('1', '2');
SELECT observers.dlq_add('g', 1, b.id, b.observer_id, 1, 'webhook', 'evt_' || b.id || '_1', b.body::jsonb,
                         'timeout after 5s', 3, NULL) IS NOT NULL AS dead_lettered
  FROM batch b JOIN ev ON ev.id = b.id WHERE ev.observer = 'orders' AND ev.op = 'INSERT' AND ev.row = '3';
SELECT observers.dlq_add('g', 1, b.id, b.observer_id, 0, 'webhook', 'evt_' || b.id || '_0', b.body::jsonb,
                         'HTTP 404 Not Found', 1, 404) IS NOT NULL AS dead_lettered
  FROM batch b JOIN ev ON ev.id = b.id WHERE ev.observer = 'big';
-- the attempt log of one pair: a retry then a failure
SELECT observers.attempt_add('w1', ARRAY[id, id], ARRAY[(SELECT id FROM observers.observer WHERE name = 'orders')]::int[] || (SELECT id FROM observers.observer WHERE name = 'orders'),
                             '{0,0}', '{1,2}', ARRAY[now() - interval '2 s', now() - interval '1 s'],
                             '{12.5,30.25}', '{503,500}', '{retry,failed}', '{"HTTP 503 Service Unavailable","HTTP 500 Internal Server Error"}') AS logged
  FROM ev WHERE observer = 'orders' AND row = '1' AND op = 'INSERT';
SELECT try($$SELECT observers.attempt_add('w1', '{1}', '{1}', '{0}', '{1}', '{}', '{1}', '{NULL}', '{delivered}', '{NULL}')$$);
SELECT observers.checkpoint_save('g', 1, (SELECT max(id) FROM batch));
SELECT observers.batch_close('g', 1);
SELECT observers.heartbeat('g', 'w1', '{"breakers": {"http://127.0.0.1:9": {"state": "open", "opened": 1}}}');

-- status(): one row per observer
SELECT observer, backlog, leader, dlq_count, last_error, last_error_at IS NOT NULL AS has_error_time,
       workers, last_heartbeat IS NOT NULL AS heartbeat, parked, open_breakers
  FROM observers.status() ORDER BY observer;
-- a worker that stopped cleanly (its last heartbeat says so) is neither counted nor its breakers
SELECT observers.heartbeat('g', 'w2', '{"role": "stopped", "breakers": {"http://10.0.0.1:80": {"state": "open", "opened": 1}}}');
SELECT observer, workers, open_breakers FROM observers.status() WHERE observer = 'orders';

-- the dead-letter queue: list with filters, show, stats
SELECT observer, action_index, error, attempts, last_status, retries, retry_pending
  FROM observers.dlq_list() ORDER BY id;
SELECT count(*) AS orders_entries FROM observers.dlq_list(observer => 'orders');
SELECT error FROM observers.dlq_list(error_contains => 'TIMEOUT');
SELECT count(*) AS since_future FROM observers.dlq_list(since => now() + interval '1 hour');
SELECT count(*) AS before_future FROM observers.dlq_list(before => now() + interval '1 hour');
SELECT count(*) AS limited FROM observers.dlq_list(lim => 2);
SELECT try($$SELECT * FROM observers.dlq_list(observer => 'nope')$$);
SELECT observer, webhook_id = 'evt_' || event_id || '_' || action_index AS same_webhook_id,
       payload->>'observer' AS payload_observer, payload->'new'->>'id' AS payload_row
  FROM observers.dlq_show((SELECT min(id) FROM observers.dlq));
SELECT try($$SELECT * FROM observers.dlq_show(-1)$$);
SELECT observer, group_name, entries, retry_pending, oldest <= newest AS ordered, last_error FROM observers.dlq_stats();

-- retry: queued once (same webhook-id, body = the dead letter's payload), then not again
SELECT observers.dlq_retry((SELECT min(id) FROM observers.dlq)) AS queued;
SELECT observers.dlq_retry((SELECT min(id) FROM observers.dlq)) AS queued_again;
SELECT try($$SELECT observers.dlq_retry(-1)$$);
SELECT p.reason, p.force, p.attempts, p.destination, p.webhook_id = q.webhook_id AS same_webhook_id,
       p.body::jsonb = q.payload AS same_body, p.requested_by = session_user AS requested_by_me
  FROM observers.parked p JOIN observers.dlq q ON q.id = p.dlq_id;
SELECT reason, force FROM observers.park_fetch('g', '{http://127.0.0.1:9}', '{}', 10);
-- the worker names its destination when it first fetches it; from then on park_fetch skips it
-- while that destination's breaker is open (only a NULL destination is ever set)
SELECT observers.park_set_destination('g', (SELECT id FROM observers.parked WHERE reason = 'dlq_retry'), 'http://127.0.0.1:9');
SELECT observers.park_set_destination('g', (SELECT id FROM observers.parked WHERE reason = 'dlq_retry'), 'http://elsewhere:80');
SELECT destination FROM observers.parked WHERE reason = 'dlq_retry';
SELECT count(*) AS fetched_while_open FROM observers.park_fetch('g', '{http://127.0.0.1:9}', '{}', 10);
SELECT count(*) AS fetched_when_closed FROM observers.park_fetch('g', '{}', '{}', 10);
SELECT id = (SELECT min(id) FROM observers.dlq) AS first, retry_pending FROM observers.dlq_list() ORDER BY id;
-- the endpoint still fails: the entry stays, with the new error and one retry counted
SELECT observers.park_finish('g', 1, (SELECT id FROM observers.parked WHERE reason = 'dlq_retry'),
                             'HTTP 503 Service Unavailable', 5, 503);
SELECT error, attempts, last_status, retries, last_retry_at IS NOT NULL AS retried, retry_pending
  FROM observers.dlq_list() WHERE id = (SELECT min(id) FROM observers.dlq);
-- retry_all: dry run counts, then queues every entry of 'orders' (none pending now)
SELECT observers.dlq_retry_all(observer => 'orders', dry_run => true) AS would_queue;
SELECT count(*) AS parked_before FROM observers.parked;
SELECT observers.dlq_retry_all(observer => 'orders') AS queued;
SELECT observers.dlq_retry_all(observer => 'orders') AS queued_again;
SELECT observers.dlq_retry_all(error_contains => 'not found', dry_run => true) AS would_queue_404;
-- the worker delivers them: each delivered entry leaves the DLQ
SELECT observers.park_finish('g', 1, p.id, NULL, 0, NULL) FROM observers.parked p WHERE p.reason = 'dlq_retry';
SELECT observer, error FROM observers.dlq_list();
SELECT count(*) AS parked_after FROM observers.parked;

-- purge: a filter is required; dry run deletes nothing; filters select exactly
SELECT try($$SELECT observers.dlq_purge()$$);
SELECT observers.dlq_add('g', 1, b.id, b.observer_id, 0, 'webhook', 'evt_' || b.id || '_0', b.body::jsonb,
                         'HTTP 410 Gone', 1, 410) IS NOT NULL AS dead_lettered
  FROM batch b JOIN ev ON ev.id = b.id WHERE ev.observer = 'orders' AND ev.op = 'UPDATE';
SELECT observers.dlq_purge(error_contains => 'gone', dry_run => true) AS would_purge, count(*) AS entries FROM observers.dlq;
SELECT observers.dlq_purge(observer => 'big', error_contains => 'gone') AS purged_none;
SELECT observers.dlq_purge(error_contains => 'gone') AS purged;
SELECT observer, error FROM observers.dlq_list();
SELECT observers.dlq_retry((SELECT min(id) FROM observers.dlq)) AS queued;
SELECT observers.dlq_purge(ids => ARRAY[(SELECT min(id) FROM observers.dlq)]) AS purged_by_id;
SELECT count(*) AS pending_retry_cancelled FROM observers.parked;
SELECT observers.dlq_purge(all_entries => true) AS purged_all, (SELECT count(*) FROM observers.dlq) AS left;

-- replay: every action of every event in the range, body as batch_fetch built it
SELECT try($$SELECT observers.replay('orders', 5, 1)$$);
SELECT try($$SELECT observers.replay('nope', 1, 2)$$);
SELECT observers.replay('orders', (SELECT min(id) FROM ev WHERE observer = 'orders'),
                                  (SELECT max(id) FROM ev WHERE observer = 'orders')) AS queued;
SELECT observers.replay('orders', (SELECT min(id) FROM ev), (SELECT max(id) FROM ev)) AS queued_again;
SELECT observers.replay('big', (SELECT min(id) FROM ev), (SELECT max(id) FROM ev), force => true) AS forced;
SELECT p.reason, p.force, count(*) AS pairs, bool_and(p.body = b.body) AS same_body,
       bool_and(p.webhook_id = format('evt_%s_%s_%s',
                                      left(replace((SELECT id::text FROM observers.installation), '-', ''), 16),
                                      p.event_id, p.action_index)) AS webhook_ids
  FROM observers.parked p JOIN batch b ON b.id = p.event_id GROUP BY 1, 2 ORDER BY 2;
DELETE FROM observers.parked;

-- debug_event: the event, which observers matched and why the others did not, its actions
SELECT observers.dlq_add('g', 1, b.id, b.observer_id, 0, 'webhook', 'evt_' || b.id || '_0', b.body::jsonb,
                         'HTTP 500 Internal Server Error', 5, 500) IS NOT NULL AS dead_lettered
  FROM batch b JOIN ev ON ev.id = b.id WHERE ev.observer = 'orders' AND ev.op = 'INSERT' AND ev.row = '1';
SELECT d->>'state' AS state, d->'event'->>'observer' AS observer, d->'event'->>'op' AS op,
       d->'event'->'new' AS new
  FROM (SELECT observers.debug_event((SELECT id FROM ev WHERE observer = 'orders' AND row = '1' AND op = 'INSERT')) AS d) x;
SELECT o->>'name' AS name, o->>'matched' AS matched, o->>'reason' AS reason
  FROM (SELECT observers.debug_event((SELECT id FROM ev WHERE observer = 'orders' AND row = '1' AND op = 'INSERT')) AS d) x,
       jsonb_array_elements(d->'observers') o;
SELECT a->>'action_index' AS action, a->>'webhook_id' ~ '^evt_[0-9a-f]{16}_[0-9]+_[0-9]+$' AS webhook_id, a->>'result' AS result
  FROM (SELECT observers.debug_event((SELECT id FROM ev WHERE observer = 'orders' AND row = '1' AND op = 'INSERT')) AS d) x,
       jsonb_array_elements(d->'actions') a;
SELECT a->>'attempt' AS attempt, a->>'status' AS status, a->>'outcome' AS outcome, a->>'duration_ms' AS ms, a->>'error' AS error
  FROM (SELECT observers.debug_event((SELECT id FROM ev WHERE observer = 'orders' AND row = '1' AND op = 'INSERT')) AS d) x,
       jsonb_array_elements(d->'attempts') a;
SELECT jsonb_array_length(d->'dlq') AS dlq_entries
  FROM (SELECT observers.debug_event((SELECT id FROM ev WHERE observer = 'orders' AND row = '1' AND op = 'INSERT')) AS d) x;
-- the UPDATE of row 1 changed total, not status: why status_changes did not match
SELECT o->>'name' AS name, o->>'reason' AS reason
  FROM (SELECT observers.debug_event((SELECT id FROM ev WHERE observer = 'orders' AND op = 'UPDATE')) AS d) x,
       jsonb_array_elements(d->'observers') o;
-- an event that is not in the batch yet is pending; an unknown id is unknown
INSERT INTO shop.orders VALUES (4, 1, 'new');
SELECT observers.debug_event((SELECT max(id) FROM observers.event))->>'state' AS new_event_state;
SELECT d->>'state' AS state, d->'event' AS event FROM (SELECT observers.debug_event(-5) AS d) x;

-- maintain() keeps attempts in day partitions and drops a day once it is past
-- observers.retention (a day 30 days ago, made by hand here; a row in attempt_default is
-- deleted instead)
SELECT count(*) >= 9 AS partitions_ahead FROM observers._day_partitions('observers.attempt', 'attempt_p');
SELECT observers._create_day_partition('observers.attempt', 'attempt_p', (now() AT TIME ZONE 'UTC')::date - 30) AS old_day;
SELECT observers.attempt_add('w1', '{1,1,1}', '{1,1,1}', '{0,0,0}', '{1,1,1}',
                             ARRAY[((now() AT TIME ZONE 'UTC')::date - 30)::timestamp AT TIME ZONE 'UTC' + interval '12 hours',
                                   now() - interval '400 days', now()],
                             '{1,1,1}', '{NULL,NULL,NULL}', '{delivered,delivered,delivered}', '{NULL,NULL,NULL}') AS logged;
SELECT tableoid::regclass = 'observers.attempt_default'::regclass AS in_default, count(*)
  FROM observers.attempt GROUP BY 1 ORDER BY 1;
SELECT regexp_replace(observers.maintain(), '^.*; (attempts: .*)$', '\1') AS trimmed;
SELECT count(*) AS attempts_left_from_long_ago FROM observers.attempt WHERE at < now() - interval '20 days';
SELECT to_regclass('observers.attempt_p' || to_char((now() AT TIME ZONE 'UTC')::date - 30, 'YYYYMMDD')) IS NULL AS old_day_dropped;

-- who may call what
CREATE ROLE ops_admin_test LOGIN IN ROLE observers_admin;
CREATE ROLE ops_worker_test LOGIN IN ROLE observers_worker;
CREATE ROLE ops_nobody_test LOGIN;
SET ROLE ops_admin_test;
SELECT count(*) >= 0 AS admin_lists FROM observers.dlq_list();
SELECT observers.dlq_purge(observer => 'big', dry_run => true) AS admin_purge_dry_run;
SELECT jsonb_typeof(observers.debug_event(1)) AS admin_debugs;
SET ROLE ops_worker_test;
SELECT try($$SELECT observers.dlq_purge(all_entries => true)$$) AS worker_purge;
SELECT try($$SELECT observers.dlq_retry(1)$$) AS worker_retry;
SELECT try($$SELECT observers.replay('orders', 1, 2)$$) AS worker_replay;
SELECT try($$SELECT * FROM observers.dlq_list()$$) AS worker_list;
SELECT try($$SELECT count(*) FROM observers.attempt$$) AS worker_reads_attempts;
SELECT try($$SELECT observers.drop_observer('big')$$) AS worker_drop;
SET ROLE ops_nobody_test;
SELECT try($$SELECT observers.create_observer('x', 'shop.orders')$$) AS nobody_create;
SELECT try($$SELECT new FROM observers.event LIMIT 1$$) AS nobody_payloads;
SELECT try($$SELECT payload FROM observers.dlq LIMIT 1$$) AS nobody_dead_letters;
SELECT try($$SELECT observers.dlq_purge(all_entries => true)$$) AS nobody_purge;
SELECT try($$SELECT observers.debug_event(1)$$) AS nobody_debug;
SELECT try($$SELECT * FROM observers.status()$$) AS nobody_status;
-- even with USAGE on the schema (granted by mistake), every function and table stays closed
RESET ROLE;
GRANT USAGE ON SCHEMA observers TO ops_nobody_test;
SET ROLE ops_nobody_test;
SELECT try($$SELECT observers.create_observer('x', 'shop.orders')$$) AS usage_create;
SELECT try($$SELECT new FROM observers.event LIMIT 1$$) AS usage_payloads;
SELECT try($$SELECT payload FROM observers.dlq LIMIT 1$$) AS usage_dead_letters;
SELECT try($$SELECT observers.dlq_purge(all_entries => true)$$) AS usage_purge;
SELECT try($$SELECT observers.replay('orders', 1, 2)$$) AS usage_replay;
SELECT try($$SELECT observers.debug_event(1)$$) AS usage_debug;
RESET ROLE;
REVOKE USAGE ON SCHEMA observers FROM ops_nobody_test;
DROP ROLE ops_admin_test;
DROP ROLE ops_worker_test;
DROP ROLE ops_nobody_test;
