-- The job queue (50_jobs.sql): transactional enqueue from SQL (rolled back: no job), unique
-- keys, async pairs idempotent and fenced, claim by priority/run_at with SKIP LOCKED and the
-- attempt counted at claim, tokens (a late finish of a rescued run changes nothing), retry with
-- backoff and discard to the dead-letter queue, rescue (dead runner, deadline), operators'
-- functions, history in job_finished, and the application role's boundary.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
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

SET client_min_messages = warning;
DROP TABLE IF EXISTS public.signups;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
CREATE TABLE public.signups (id int PRIMARY KEY, email text);
SELECT count(*) AS created FROM observers.create_observer(
    name => 'welcome', table_name => 'public.signups', events => '{INSERT}',
    actions => '[{"type":"webhook","url":"http://127.0.0.1:9/hook"},
                 {"type":"webhook","url":"http://127.0.0.1:9/other"}]');

-- 1. enqueue in the caller's transaction: rolled back, no job
BEGIN;
SELECT observers.job_enqueue('welcome', '{"email": "a@example.com"}') > 0 AS enqueued;
SELECT count(*) AS jobs_inside FROM observers.job;
ROLLBACK;
SELECT count(*) AS jobs_after_rollback FROM observers.job;

-- committed: one available job whose body carries the payload as `new`
SELECT observers.job_enqueue('welcome', '{"email": "a@example.com"}') AS j1 \gset
SELECT state, queue, priority, attempts, max_attempts, action_index, event_id,
       webhook_id ~ '^job_[0-9a-f]{16}_[0-9]+$' AS webhook_id_ok,
       webhook_id = observers._job_webhook_id(id) AS webhook_id_of_job,
       (body::jsonb - 'enqueued_at' - 'job') AS body, enqueued_by
  FROM observers.job WHERE id = :j1;

-- unique key: a second enqueue returns the first job
SELECT observers.job_enqueue('welcome', '{"n": 1}', unique_key => 'user-7') AS k1 \gset
SELECT observers.job_enqueue('welcome', '{"n": 2}', unique_key => 'user-7') = :k1 AS same_job;
SELECT count(*) AS keyed FROM observers.job WHERE unique_key LIKE 'key:%';

-- scheduled, queues, priorities
SELECT observers.job_enqueue('welcome', '{"n": 3}', run_at => now() + interval '1 hour') AS sched \gset
SELECT observers.job_enqueue('welcome', '{"n": 4}', queue => 'mail', priority => -5, action_index => 1) AS urgent \gset
SELECT state FROM observers.job_list() WHERE id = :sched;

-- bad input
SELECT try($$SELECT observers.job_enqueue('nope', '{}')$$);
SELECT try($$SELECT observers.job_enqueue('welcome', '{}', action_index => 2)$$);
SELECT try($$SELECT observers.job_enqueue('welcome', NULL)$$);
SELECT try($$SELECT observers.job_enqueue('welcome', '{}', queue => 'Bad Queue')$$);
SELECT try($$SELECT observers.job_enqueue('welcome', '{}', max_attempts => 0)$$);
SELECT try($$SELECT observers.job_enqueue('welcome', '{}', unique_key => '')$$);

-- 2. claim: the most urgent first, the scheduled one not at all; the attempt counted, a token
SELECT observers.job_runner_beat('00000000-0000-0000-0000-00000000000a', 'default', 'w1');
SELECT id = :urgent AS urgent_first, attempts, token IS NOT NULL AS has_token, queue
  FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 1, '5 minutes');
SELECT id = :j1 AS then_oldest, attempts
  FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 1, '5 minutes');
SELECT id = :k1 AS then_keyed
  FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 5, '5 minutes');
SELECT count(*) AS nothing_left_due
  FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 5, '5 minutes');
SELECT state, worker_id, count(*) FROM observers.job GROUP BY 1, 2 ORDER BY 1;

-- SKIP LOCKED: a second session claims nothing while this one holds the row
SELECT observers.job_enqueue('welcome', '{"n": 5}') AS j5 \gset
BEGIN;
SELECT id = :j5 AS locked_here FROM observers.job WHERE id = :j5 FOR UPDATE;
SELECT * FROM dblink(format('host=%s port=%s dbname=%s user=%s',
                    coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
                    current_setting('port'), current_database(), current_user),
    $$SELECT count(*) FROM observers.job_claim('default', 'w2', '00000000-0000-0000-0000-00000000000b', 5, '5 minutes')$$)
    AS t(claimed_elsewhere bigint);
ROLLBACK;

-- 3. finish: wrong token changes nothing; completed moves to the history
SELECT observers.job_finish(:j1, gen_random_uuid(), 'completed') AS wrong_token;
SELECT observers.job_finish(:j1, (SELECT token FROM observers.job WHERE id = :j1), 'completed') AS finished;
SELECT count(*) AS still_hot FROM observers.job WHERE id = :j1;
SELECT state, attempts, worker_id, finished_at IS NOT NULL AS has_finished_at
  FROM observers.job_finished WHERE id = :j1;
-- the same unique key after it ran: still the first job
SELECT observers.job_finish(:k1, (SELECT token FROM observers.job WHERE id = :k1), 'completed');
SELECT observers.job_enqueue('welcome', '{"n": 9}', unique_key => 'user-7') = :k1 AS key_kept_after_completion;
SELECT count(*) AS hot_with_key FROM observers.job WHERE unique_key LIKE 'key:%';

-- retry with backoff, then out of attempts: discarded to the dead-letter queue
SELECT observers.job_finish(:urgent, (SELECT token FROM observers.job WHERE id = :urgent),
                            'retry', 'HTTP 503', 503, interval '1 hour') AS after_503;
SELECT state, run_at > now() + interval '59 minutes' AS backed_off, last_error, last_status
  FROM observers.job WHERE id = :urgent;
SELECT observers.job_retry(:urgent) AS run_now;
SELECT attempts FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 1, '5 minutes');
SELECT observers.job_finish(:urgent, (SELECT token FROM observers.job WHERE id = :urgent), 'snooze',
                            'breaker open', NULL, interval '0') AS snoozed;
SELECT attempts AS attempt_given_back FROM observers.job WHERE id = :urgent;
SELECT observers.job_finish(id, token, 'discard', 'HTTP 404 Not Found', 404)
  FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 1, '5 minutes');
SELECT state, attempts, last_error, dlq_id IS NOT NULL AS dead_lettered
  FROM observers.job_finished WHERE id = :urgent;
SELECT event_id = -:urgent AS event_id_is_minus_job, action_index, action_type,
       webhook_id = observers._job_webhook_id(:urgent) AS same_webhook_id,
       payload -> 'new' AS payload, error, attempts, last_status
  FROM observers.dlq;
-- job_retry of a discarded job: back to available, its dead letter gone
SELECT observers.job_retry(:urgent) AS retried;
SELECT state, attempts FROM observers.job WHERE id = :urgent;
SELECT count(*) AS dead_letters FROM observers.dlq;
SELECT try(format('SELECT observers.job_retry(%s)', :j1));
SELECT try('SELECT observers.job_retry(999999)');

-- 4. rescue: a runner that stopped beating, a run past its deadline; the late finish of the
--    rescued run changes nothing
SELECT observers.job_enqueue('welcome', '{"n": 6}', max_attempts => 2) AS r1 \gset
SELECT token AS old_token FROM observers.job_claim('default', 'w9', '00000000-0000-0000-0000-000000000009', 10, '5 minutes')
 WHERE id = :r1 \gset
SELECT observers.job_rescue('default', interval '1 minute') AS rescued_dead_runner;
SELECT state, last_error FROM observers.job WHERE id = :r1;
SELECT observers.job_finish(:r1, :'old_token', 'completed') AS late_finish;
SELECT count(*) AS late_batch_complete
  FROM observers.job_complete(ARRAY[:r1]::bigint[], ARRAY[:'old_token']::uuid[]);
SELECT state FROM observers.job WHERE id = :r1;
-- second run: past its deadline, out of attempts: discarded
SELECT attempts FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 10, '-1 second')
 WHERE id = :r1;
SELECT observers.job_rescue('default', interval '1 minute') AS rescued;
SELECT state, attempts, last_error FROM observers.job_finished WHERE id = :r1;
-- a live runner's job within its deadline is not rescued
SELECT observers.job_enqueue('welcome', '{"n": 7}') AS r2 \gset
SELECT count(*) FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 10, '5 minutes') WHERE id = :r2;
SELECT observers.job_rescue('default', interval '1 minute') AS rescued_none;
SELECT state FROM observers.job WHERE id = :r2;
-- job_complete: many runs in one statement; a pair with a stale token (or a job no longer
-- running) changes nothing
SELECT array_agg(c) = ARRAY[:r2]::bigint[] AS completed_only_the_current_run
  FROM observers.job_complete(ARRAY[:r2, :r1, 999999]::bigint[],
                              ARRAY[(SELECT token FROM observers.job WHERE id = :r2), gen_random_uuid(), gen_random_uuid()]) AS c;
SELECT state, attempts, worker_id, started_at IS NOT NULL AS has_started_at
  FROM observers.job_finished WHERE id = :r2;
SELECT observers.job_runner_beat('00000000-0000-0000-0000-00000000000a', 'default', 'w1', true);
SELECT count(*) AS runners FROM observers.job_runner;

-- 5. async pairs: fenced, idempotent per (event, action), also after the job finished
SELECT observers.lease_acquire('default', 'w1', '1 minute') AS epoch \gset
SELECT observers.job_enqueue_pair('default', :epoch, 42, (SELECT id FROM observers.observer WHERE name = 'welcome'),
                                  0, '2026-11-29', 'evt_x_42_0', '{"id": 42}', 3) AS p1 \gset
SELECT observers.job_enqueue_pair('default', :epoch, 42, (SELECT id FROM observers.observer WHERE name = 'welcome'),
                                  0, '2026-11-29', 'evt_x_42_0', '{"id": 42}', 3) = :p1 AS same_pair_same_job;
SELECT try(format($$SELECT observers.job_enqueue_pair('default', %s, 43, 1, 0, '2026-11-29', 'evt_x_43_0', '{}', 3)$$, :epoch + 1));
SELECT observers.job_finish(id, token, 'completed')
  FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 10, '5 minutes') WHERE id = :p1;
SELECT observers.job_enqueue_pair('default', :epoch, 42, (SELECT id FROM observers.observer WHERE name = 'welcome'),
                                  0, '2026-11-29', 'evt_x_42_0', '{"id": 42}', 3) = :p1 AS still_one_job_after_it_ran;
SELECT count(*) AS jobs_for_pair FROM observers.job_list() WHERE event_id = 42;

-- 6. cancel, pause/resume, stats
SELECT observers.job_enqueue('welcome', '{"n": 8}', queue => 'mail') AS c1 \gset
SELECT observers.job_queue_pause('mail') AS paused;
SELECT count(*) AS claimed_from_paused
  FROM observers.job_claim('default', 'w1', '00000000-0000-0000-0000-00000000000a', 10, '5 minutes') AS c
 WHERE c.queue = 'mail';
SELECT observers.job_cancel(:c1) AS cancelled;
SELECT observers.job_cancel(:c1) AS cancelled_again;
SELECT observers.job_queue_resume('mail') AS resumed;
SELECT try('SELECT observers.job_cancel(999999)');
SELECT group_name, queue, paused, available, scheduled, running, retryable, completed, discarded, cancelled,
       oldest_due_age IS NOT NULL AS has_due
  FROM observers.job_stats();
SELECT state, count(*) FROM observers.job_list(lim => 1000) GROUP BY 1 ORDER BY 1;
-- status(): the queue depth per observer, and whether a due job waits
SELECT observer, jobs, jobs = (SELECT count(*) FROM observers.job j JOIN observers.observer o ON o.id = j.observer_id
                                WHERE o.name = s.observer) AS jobs_match,
       oldest_job_age IS NOT NULL AS has_oldest_job_age
  FROM observers.status() AS s ORDER BY 1;
SELECT observers.job_maintain() ~ '^jobs: created 0, dropped 0, skipped 0' AS maintain_idempotent;

-- 7. the application role: enqueue only; no table, no other function, no URL of its own
CREATE ROLE regress_app LOGIN;
GRANT observers_enqueue TO regress_app;
SET ROLE regress_app;
SELECT observers.job_enqueue('welcome', '{"from": "app"}') > 0 AS app_enqueued;
SELECT try('SELECT count(*) FROM observers.job');
SELECT try($$INSERT INTO observers.job (group_name, observer_id, action_index, day, webhook_id, unique_key, body, max_attempts) VALUES ('default', 1, 0, '2026-11-29', 'x', 'y', '{}', 1)$$);
SELECT try($$SELECT observers.create_observer(name => 'evil', table_name => 'public.signups', events => '{INSERT}', actions => '[{"type":"webhook","url":"http://10.0.0.1/"}]')$$);
SELECT try($$SELECT observers.job_claim('default', 'x', gen_random_uuid(), 1, '1 minute')$$);
SELECT try($$SELECT observers.job_list()$$);
SELECT try($$SELECT observers.job_enqueue_pair('default', 1, 1, 1, 0, '2026-11-29', 'w', '{}', 1)$$);
RESET ROLE;
SELECT enqueued_by FROM observers.job WHERE body::jsonb -> 'new' ->> 'from' = 'app';
DROP OWNED BY regress_app;
DROP ROLE regress_app;
