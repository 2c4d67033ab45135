-- pg_observers: the job queue (docs/JOBS.md).
--
-- A job is one run of one observer action with a body, executed by ANY worker of the
-- observer's group (leader and standbys alike). Jobs come from
--   * actions with `mode: async`: the leader enqueues the (event, action) pair
--     (observers.job_enqueue_pair, fenced, idempotent per pair) instead of running it inline;
--   * SQL, inside the application's own transaction: observers.job_enqueue(observer, payload,
--     ...) for observers_admin and observers_enqueue (the application role). The caller names an
--     observer and one of its actions: it never supplies a URL, a header or a secret, so it can
--     only make the worker call a destination an operator defined (docs/SECURITY.md).
--
-- Two tables:
--   observers.job           the unfinished jobs (small, hot): available (run_at in the future is
--                           reported as "scheduled"), running, retryable.
--   observers.job_finished  completed / discarded / cancelled jobs, partitioned by day of
--                           finished_at and dropped by whole partitions (observers.job_maintain):
--                           history never costs DELETEs or bloat.
-- Finishing a job moves its row (DELETE + INSERT in one transaction); the hot table holds only
-- the backlog, so its size follows the backlog, not the history.
--
-- A claim counts the attempt (a job that crashes its worker still uses one up) and gives the
-- run a fresh token; a finish with another token changes nothing (the run was rescued and
-- another worker owns the job now).

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'observers_enqueue') THEN
        BEGIN
            CREATE ROLE observers_enqueue NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created by a concurrent CREATE EXTENSION in another database
        END;
    END IF;
END
$roles$;

CREATE SEQUENCE observers.job_id_seq;

CREATE TABLE observers.job (
    id           bigint      PRIMARY KEY DEFAULT nextval('observers.job_id_seq'),
    group_name   text        NOT NULL,
    queue        text        NOT NULL DEFAULT 'default',
    state        text        NOT NULL DEFAULT 'available'
                 CONSTRAINT job_state_valid CHECK (state IN ('available', 'running', 'retryable')),
    priority     integer     NOT NULL DEFAULT 0,      -- smaller runs first
    run_at       timestamptz NOT NULL DEFAULT now(),
    observer_id  integer     NOT NULL,
    action_index integer     NOT NULL,
    event_id     bigint,                               -- NULL: enqueued from SQL
    day          date        NOT NULL,                 -- dedup partition (event's or enqueue day)
    webhook_id   text        NOT NULL,                 -- the idempotency key sent with every attempt
    unique_key   text        NOT NULL,                 -- 'pair:<event>:<observer>:<action>' | 'key:<observer>:<key>' | 'job:<id>'
    body         text        NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,       -- counted at claim
    max_attempts integer     NOT NULL CONSTRAINT job_max_attempts_positive CHECK (max_attempts > 0),
    last_error   text,
    last_status  integer,
    token        uuid,                                 -- the current run's token (running only)
    runner_id    uuid,                                 -- the worker process running it
    worker_id    text,                                 -- its worker.id (kept after the run)
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    deadline     timestamptz,                          -- running: rescued after this
    enqueued_by  text        NOT NULL DEFAULT current_user
);
COMMENT ON TABLE observers.job IS
    'Unfinished jobs (available, scheduled, running, retryable); finished ones are in observers.job_finished.';
CREATE UNIQUE INDEX job_unique_key_idx ON observers.job (group_name, unique_key);
CREATE INDEX job_claim_idx ON observers.job (group_name, priority, run_at, id)
    WHERE state <> 'running';
CREATE INDEX job_running_idx ON observers.job (group_name, deadline) WHERE state = 'running';
SELECT pg_catalog.pg_extension_config_dump('observers.job', '');
SELECT pg_catalog.pg_extension_config_dump('observers.job_id_seq', '');

CREATE TABLE observers.job_finished (
    id           bigint      NOT NULL,
    group_name   text        NOT NULL,
    queue        text        NOT NULL,
    state        text        NOT NULL
                 CONSTRAINT job_finished_state_valid CHECK (state IN ('completed', 'discarded', 'cancelled')),
    priority     integer     NOT NULL,
    run_at       timestamptz NOT NULL,
    observer_id  integer     NOT NULL,
    action_index integer     NOT NULL,
    event_id     bigint,
    day          date        NOT NULL,
    webhook_id   text        NOT NULL,
    unique_key   text        NOT NULL,
    body         text        NOT NULL,
    attempts     integer     NOT NULL,
    max_attempts integer     NOT NULL,
    last_error   text,
    last_status  integer,
    worker_id    text,
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    enqueued_by  text        NOT NULL,
    dlq_id       bigint                               -- discarded: its dead letter
) PARTITION BY RANGE (finished_at);
COMMENT ON TABLE observers.job_finished IS
    'Completed, discarded and cancelled jobs, one partition per day (UTC), dropped after observers.retention.';
CREATE TABLE observers.job_finished_default PARTITION OF observers.job_finished DEFAULT;
CREATE INDEX job_finished_id_idx ON observers.job_finished (id);
CREATE INDEX job_finished_unique_key_idx ON observers.job_finished (group_name, unique_key);

-- Which worker processes are alive (one row per running job runner; beaten every few
-- seconds). A running job whose runner stopped beating is rescued.
CREATE TABLE observers.job_runner (
    runner_id  uuid        PRIMARY KEY,
    group_name text        NOT NULL,
    worker_id  text        NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

-- Paused queues of a group: their jobs are not claimed.
CREATE TABLE observers.job_queue_paused (
    group_name text        NOT NULL,
    queue      text        NOT NULL,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text        NOT NULL DEFAULT current_user,
    PRIMARY KEY (group_name, queue)
);

CREATE FUNCTION observers._job_partition_name(p_day date)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 'job_finished_p' || to_char(p_day, 'YYYYMMDD') $$;

-- The job's webhook-id: a pair keeps the pair's (evt_...), an SQL job gets job_<installation>_<id>.
CREATE FUNCTION observers._job_webhook_id(p_id bigint)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.concat('job_',
                             pg_catalog.left(pg_catalog.replace(observers._installation_id()::text, '-', ''), 16),
                             '_', p_id)
$$;

-- Moves a job out of the hot table into job_finished (and, discarded, into the dead-letter
-- queue: an SQL job's dead letter has event_id = -job id, so observers.dlq_retry() works for it
-- like for any pair). Returns the new state.
CREATE FUNCTION observers._job_close(p_id bigint, p_state text, p_error text, p_status int)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j      observers.job;
    v_dlq  bigint;
    v_type text;
    v_payload jsonb;
BEGIN
    DELETE FROM observers.job WHERE id = p_id RETURNING * INTO j;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_state = 'discarded' THEN
        SELECT coalesce(o.actions -> j.action_index ->> 'type', 'unknown') INTO v_type
          FROM observers.observer AS o WHERE o.id = j.observer_id;
        BEGIN
            v_payload := j.body::jsonb;
        EXCEPTION WHEN invalid_text_representation THEN
            v_payload := to_jsonb(j.body);
        END;
        INSERT INTO observers.dlq (group_name, event_id, observer_id, action_index, action_type,
                                   webhook_id, payload, error, attempts, last_status, epoch)
        VALUES (j.group_name, coalesce(j.event_id, -j.id), j.observer_id, j.action_index,
                coalesce(v_type, 'unknown'), j.webhook_id, v_payload,
                coalesce(p_error, j.last_error, 'discarded'), j.attempts,
                coalesce(p_status, j.last_status), 0)
        RETURNING id INTO v_dlq;
    END IF;
    INSERT INTO observers.job_finished (id, group_name, queue, state, priority, run_at, observer_id,
                                        action_index, event_id, day, webhook_id, unique_key, body,
                                        attempts, max_attempts, last_error, last_status, worker_id,
                                        created_at, started_at, finished_at, enqueued_by, dlq_id)
    VALUES (j.id, j.group_name, j.queue, p_state, j.priority, j.run_at, j.observer_id,
            j.action_index, j.event_id, j.day, j.webhook_id, j.unique_key, j.body, j.attempts,
            j.max_attempts, coalesce(p_error, j.last_error), coalesce(p_status, j.last_status),
            j.worker_id, j.created_at, j.started_at, now(), j.enqueued_by, v_dlq);
    RETURN p_state;
END
$$;

-- Inserts a job unless its unique key is already taken, in the hot table or in the retained
-- history. Returns the new job's id, or the id of the job that holds the key.
CREATE FUNCTION observers._job_insert(j observers.job)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO observers.job (id, group_name, queue, state, priority, run_at, observer_id,
                               action_index, event_id, day, webhook_id, unique_key, body,
                               max_attempts, enqueued_by)
    VALUES (j.id, j.group_name, j.queue, 'available', j.priority, j.run_at, j.observer_id,
            j.action_index, j.event_id, j.day, j.webhook_id, j.unique_key, j.body,
            j.max_attempts, j.enqueued_by)
    ON CONFLICT (group_name, unique_key) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT x.id INTO v_id FROM observers.job AS x
         WHERE x.group_name = j.group_name AND x.unique_key = j.unique_key;
        -- the holder finished between the conflict and this read: it is in the history now
        IF v_id IS NULL THEN
            SELECT f.id INTO v_id FROM observers.job_finished AS f
             WHERE f.group_name = j.group_name AND f.unique_key = j.unique_key
             ORDER BY f.id DESC LIMIT 1;
        END IF;
        RETURN v_id;
    END IF;
    -- a job with this key already ran (a new statement: a holder that finished while this
    -- INSERT waited for it is visible now). This insert was never visible to anyone: undo it.
    SELECT f.id INTO v_id FROM observers.job_finished AS f
     WHERE f.group_name = j.group_name AND f.unique_key = j.unique_key
     ORDER BY f.id DESC LIMIT 1;
    IF v_id IS NOT NULL THEN
        DELETE FROM observers.job WHERE id = j.id;
        RETURN v_id;
    END IF;
    PERFORM pg_notify('observers_jobs', j.group_name);
    RETURN j.id;
END
$$;

-- The transactional outbox for ad-hoc work: enqueue a run of action `action_index` of
-- observer `observer` with `payload` (the action sees it as `new`, e.g. {{ new.email }}).
-- Runs in the caller's transaction: rolled back, no job. For observers_admin and
-- observers_enqueue.
CREATE FUNCTION observers.job_enqueue(observer text, payload jsonb, action_index int DEFAULT 0,
                                      run_at timestamptz DEFAULT NULL, queue text DEFAULT 'default',
                                      priority int DEFAULT 0, unique_key text DEFAULT NULL,
                                      max_attempts int DEFAULT 5)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    o     observers.observer;
    j     observers.job;
    v_now timestamptz := now();
BEGIN
    SELECT * INTO o FROM observers.observer AS x WHERE x.name = observer;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = format('observer %L does not exist', observer),
            HINT = 'A job runs an action of an existing observer: create it first (observers.create_observer).';
    END IF;
    IF NOT o.enabled THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('observer %L is disabled', observer),
            HINT = 'Enable it (observers.enable_observer) before enqueuing jobs for it.';
    END IF;
    IF action_index IS NULL OR action_index < 0
       OR action_index >= jsonb_array_length(o.actions) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('observer %L has no action %s (it has %s)', observer,
                             coalesce(action_index::text, 'NULL'), jsonb_array_length(o.actions)),
            HINT = 'action_index counts the observer''s actions from 0.';
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'payload must not be NULL (use ''{}'' for none)';
    END IF;
    IF coalesce(queue, '') !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid queue name %L', queue),
            HINT = 'Use 1 to 63 lowercase letters, digits and _, starting with a letter.';
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 OR max_attempts > 100 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('max_attempts must be between 1 and 100, got %s', coalesce(max_attempts::text, 'NULL'));
    END IF;
    IF unique_key = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'unique_key must not be empty (NULL: no uniqueness)';
    END IF;
    j.id := nextval('observers.job_id_seq');
    j.group_name := o.group_name;
    j.queue := queue;
    j.priority := coalesce(priority, 0);
    j.run_at := greatest(coalesce(run_at, v_now), v_now);
    j.observer_id := o.id;
    j.action_index := action_index;
    j.day := (v_now AT TIME ZONE 'UTC')::date;
    j.webhook_id := observers._job_webhook_id(j.id);
    j.unique_key := CASE WHEN unique_key IS NULL THEN 'job:' || j.id
                         ELSE 'key:' || o.id || ':' || unique_key END;
    j.body := json_build_object('job', j.id, 'observer', o.name, 'op', 'JOB', 'queue', j.queue,
                                'new', payload, 'old', NULL,
                                'enqueued_at', to_char(v_now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text;
    j.max_attempts := max_attempts;
    j.enqueued_by := observers._calling_role()::regrole::text;
    RETURN observers._job_insert(j);
END
$$;

-- `mode: async`: the leader enqueues an (event, action) pair (fenced). Idempotent per pair: a
-- crash or a failover between this and the checkpoint never makes a second job.
CREATE FUNCTION observers.job_enqueue_pair(group_name text, epoch bigint, event_id bigint,
                                           observer_id int, action_index int, day date,
                                           webhook_id text, body text, max_attempts int)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    j observers.job;
BEGIN
    PERFORM observers._fence(group_name, epoch);
    IF event_id IS NULL OR observer_id IS NULL OR action_index IS NULL OR day IS NULL
       OR body IS NULL OR coalesce(webhook_id, '') = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'job_enqueue_pair: event_id, observer_id, action_index, day, webhook_id and body must be set';
    END IF;
    j.id := nextval('observers.job_id_seq');
    j.group_name := group_name;
    j.queue := 'default';
    j.priority := 0;
    j.run_at := now();
    j.observer_id := observer_id;
    j.action_index := action_index;
    j.event_id := event_id;
    j.day := day;
    j.webhook_id := webhook_id;
    j.unique_key := 'pair:' || event_id || ':' || observer_id || ':' || action_index;
    j.body := body;
    j.max_attempts := greatest(coalesce(max_attempts, 5), 1);
    j.enqueued_by := observers._calling_role()::regrole::text;
    RETURN observers._job_insert(j);
END
$$;

-- A worker process's job runner is alive (every few seconds); its jobs are rescued once it
-- stops beating. `stopping`: it is gone (clean shutdown), its row goes.
CREATE FUNCTION observers.job_runner_beat(runner_id uuid, group_name text, worker_id text,
                                          stopping boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    IF stopping THEN
        DELETE FROM observers.job_runner AS r WHERE r.runner_id = runner_id;
        RETURN;
    END IF;
    INSERT INTO observers.job_runner AS r (runner_id, group_name, worker_id)
    VALUES (runner_id, group_name, worker_id)
    ON CONFLICT ON CONSTRAINT job_runner_pkey DO UPDATE SET last_seen = now();
END
$$;

-- Running jobs of a group whose runner stopped beating for `stale`, or that ran past their
-- deadline, go back to retryable (or, out of attempts, are discarded to the dead-letter
-- queue). Their token is cleared: a late finish of the old run changes nothing. Returns how
-- many were rescued.
CREATE FUNCTION observers.job_rescue(group_name text, stale interval)
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    r   record;
    v_n int := 0;
BEGIN
    FOR r IN
        SELECT j.id, j.attempts, j.max_attempts,
               CASE WHEN j.deadline < now() THEN 'ran past its deadline'
                    ELSE format('its worker %s stopped (no heartbeat for %s)', j.worker_id, stale) END AS why
          FROM observers.job AS j
         WHERE j.group_name = group_name AND j.state = 'running'
           AND (j.deadline < now()
                OR NOT EXISTS (SELECT 1 FROM observers.job_runner AS w
                                WHERE w.runner_id = j.runner_id AND w.last_seen > now() - stale))
         FOR UPDATE OF j SKIP LOCKED
    LOOP
        IF r.attempts >= r.max_attempts THEN
            PERFORM observers._job_close(r.id, 'discarded', 'rescued: ' || r.why || '; no attempts left', NULL);
        ELSE
            UPDATE observers.job AS j
               SET state = 'retryable', token = NULL, runner_id = NULL, deadline = NULL,
                   run_at = now(), last_error = 'rescued: ' || r.why
             WHERE j.id = r.id;
        END IF;
        v_n := v_n + 1;
    END LOOP;
    DELETE FROM observers.job_runner AS w
     WHERE w.group_name = group_name AND w.last_seen < now() - stale * 10;
    RETURN v_n;
END
$$;

-- Claims up to `lim` jobs of a group that are due (priority, then run_at, then id), skipping
-- paused queues and rows another worker is claiming. Each claim counts an attempt and carries a
-- fresh token; it commits at once (the caller runs the job outside any transaction).
CREATE FUNCTION observers.job_claim(group_name text, worker_id text, runner_id uuid, lim int,
                                    timeout interval)
RETURNS TABLE (id bigint, token uuid, observer_id int, action_index int, event_id bigint,
               day text, webhook_id text, body text, attempts int, max_attempts int,
               run_at timestamptz, queue text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH due AS (
        SELECT j.id
          FROM observers.job AS j
         WHERE j.group_name = $1 AND j.state <> 'running' AND j.run_at <= now()
           AND NOT EXISTS (SELECT 1 FROM observers.job_queue_paused AS p
                            WHERE p.group_name = j.group_name AND p.queue = j.queue)
         ORDER BY j.priority, j.run_at, j.id
         LIMIT greatest($4, 0)
           FOR UPDATE SKIP LOCKED
    )
    UPDATE observers.job AS j
       SET state = 'running', attempts = j.attempts + 1, token = gen_random_uuid(),
           runner_id = $3, worker_id = $2, started_at = now(), deadline = now() + $5
      FROM due
     WHERE j.id = due.id
    RETURNING j.id, j.token, j.observer_id, j.action_index, j.event_id,
              to_char(j.day, 'YYYY-MM-DD'), j.webhook_id, j.body, j.attempts, j.max_attempts,
              j.run_at, j.queue
$$;

-- The end of one run. `outcome`:
--   completed   the action succeeded (or deduplication says it already had);
--   retry       a retryable failure: retryable again after `retry_in`, or discarded (dead
--               letter) when it has no attempts left;
--   discard     a permanent failure: to the dead-letter queue;
--   snooze      not attempted (its destination's circuit breaker is open, or shutdown): back
--               to available after `retry_in`, the attempt given back.
-- Returns the job's new state, or NULL when `token` is not the job's current run (it was
-- rescued and belongs to another run now): nothing changes.
CREATE FUNCTION observers.job_finish(id bigint, token uuid, outcome text, error text DEFAULT NULL,
                                     last_status int DEFAULT NULL, retry_in interval DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    j observers.job;
BEGIN
    SELECT * INTO j FROM observers.job AS x
     WHERE x.id = id AND x.state = 'running' AND x.token = token
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    CASE outcome
    WHEN 'completed' THEN
        RETURN observers._job_close(j.id, 'completed', NULL, last_status);
    WHEN 'discard' THEN
        RETURN observers._job_close(j.id, 'discarded', coalesce(error, 'failed'), last_status);
    WHEN 'retry' THEN
        IF j.attempts >= j.max_attempts THEN
            RETURN observers._job_close(j.id, 'discarded', coalesce(error, 'failed'), last_status);
        END IF;
        UPDATE observers.job AS x
           SET state = 'retryable', token = NULL, runner_id = NULL, deadline = NULL,
               run_at = now() + coalesce(retry_in, interval '0'), last_error = error,
               last_status = job_finish.last_status
         WHERE x.id = j.id;
        RETURN 'retryable';
    WHEN 'snooze' THEN
        UPDATE observers.job AS x
           SET state = 'available', token = NULL, runner_id = NULL, deadline = NULL,
               attempts = greatest(x.attempts - 1, 0),
               run_at = now() + coalesce(retry_in, interval '0'),
               last_error = coalesce(error, x.last_error)
         WHERE x.id = j.id;
        RETURN 'available';
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('job_finish: unknown outcome %L (completed, retry, discard, snooze)', outcome);
    END CASE;
END
$$;

-- The end of many successful runs in one statement: the hot path of a draining queue (one round
-- trip and one commit per batch of finished jobs instead of one per job; the worker collects
-- the completions of its running jobs while the previous batch is being written). Same effect
-- as job_finish(id, token, 'completed') for each (id, token) pair; a pair whose token is not the
-- job's current run (rescued meanwhile) changes nothing. Returns the ids that completed.
CREATE FUNCTION observers.job_complete(ids bigint[], tokens uuid[])
RETURNS SETOF bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH done AS (
        DELETE FROM observers.job AS j
         USING unnest($1, $2) AS f(id, token)
         WHERE j.id = f.id AND j.state = 'running' AND j.token = f.token
        RETURNING j.*
    )
    INSERT INTO observers.job_finished (id, group_name, queue, state, priority, run_at, observer_id,
                                        action_index, event_id, day, webhook_id, unique_key, body,
                                        attempts, max_attempts, last_error, last_status, worker_id,
                                        created_at, started_at, finished_at, enqueued_by, dlq_id)
    SELECT d.id, d.group_name, d.queue, 'completed', d.priority, d.run_at, d.observer_id,
           d.action_index, d.event_id, d.day, d.webhook_id, d.unique_key, d.body, d.attempts,
           d.max_attempts, d.last_error, d.last_status, d.worker_id, d.created_at, d.started_at,
           now(), d.enqueued_by, NULL
      FROM done AS d
    RETURNING id
$$;

-- Job history partitions ahead (today .. today + 2) and retention (observers.retention):
-- whole partitions are dropped, never rows deleted. Returns a one-line summary.
CREATE FUNCTION observers.job_maintain()
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'
AS $$
DECLARE
    v_today   date := (now() AT TIME ZONE 'UTC')::date;
    v_cutoff  timestamptz := now() - observers._retention_setting()::interval;
    v_created int := 0;
    v_dropped int := 0;
    v_skipped int := 0;
    v_name    text;
    v_rel     regclass;
    r         record;
BEGIN
    FOR i IN 0..2 LOOP
        v_name := observers._job_partition_name(v_today + i);
        CONTINUE WHEN to_regclass('observers.' || v_name) IS NOT NULL;
        BEGIN
            EXECUTE format('CREATE TABLE observers.%I PARTITION OF observers.job_finished FOR VALUES FROM (%L) TO (%L)',
                           v_name, to_char(v_today + i, 'YYYY-MM-DD') || ' 00:00:00+00',
                           to_char(v_today + i + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
            v_rel := ('observers.' || v_name)::regclass;
            IF NOT observers._is_extension_member(v_rel) THEN
                EXECUTE format('ALTER EXTENSION pg_observers ADD TABLE %s', v_rel);
            END IF;
            EXECUTE format('GRANT SELECT ON %s TO observers_admin', v_rel);
            v_created := v_created + 1;
        EXCEPTION WHEN lock_not_available OR check_violation THEN
            v_skipped := v_skipped + 1;
        END;
    END LOOP;
    FOR r IN
        SELECT c.oid::regclass AS rel
          FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'observers.job_finished'::regclass
           AND c.relname ~ '^job_finished_p[0-9]{8}$'
           AND (to_date(substr(c.relname, 15), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' < v_cutoff
    LOOP
        BEGIN
            IF observers._is_extension_member(r.rel) THEN
                EXECUTE format('ALTER EXTENSION pg_observers DROP TABLE %s', r.rel);
            END IF;
            EXECUTE format('DROP TABLE %s', r.rel);
            v_dropped := v_dropped + 1;
        EXCEPTION WHEN lock_not_available THEN
            v_skipped := v_skipped + 1;
        END;
    END LOOP;
    DELETE FROM observers.job_finished_default WHERE finished_at < v_cutoff;
    RETURN format('jobs: created %s, dropped %s, skipped %s history partitions', v_created, v_dropped, v_skipped);
END
$$;
SELECT observers.job_maintain();

-- ---------------------------------------------------------------- operators (observers_admin)

CREATE FUNCTION observers._job_state(p_state text, p_run_at timestamptz)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT CASE WHEN p_state = 'available' AND p_run_at > now() THEN 'scheduled' ELSE p_state END $$;

-- Jobs, newest first: unfinished and (with finished => true, the default) retained history.
-- `state` filters on available, scheduled, running, retryable, completed, discarded, cancelled.
CREATE FUNCTION observers.job_list(state text DEFAULT NULL, queue text DEFAULT NULL,
                                   observer text DEFAULT NULL, lim int DEFAULT 100)
RETURNS TABLE (id bigint, group_name text, queue text, state text, observer text,
               action_index int, event_id bigint, attempts int, max_attempts int,
               priority int, run_at timestamptz, created_at timestamptz,
               finished_at timestamptz, worker_id text, last_error text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.* FROM (
        SELECT j.id, j.group_name, j.queue, observers._job_state(j.state, j.run_at) AS state,
               o.name, j.action_index, j.event_id, j.attempts, j.max_attempts, j.priority,
               j.run_at, j.created_at, NULL::timestamptz, j.worker_id, j.last_error
          FROM observers.job AS j LEFT JOIN observers.observer AS o ON o.id = j.observer_id
        UNION ALL
        SELECT f.id, f.group_name, f.queue, f.state, o.name, f.action_index, f.event_id,
               f.attempts, f.max_attempts, f.priority, f.run_at, f.created_at, f.finished_at,
               f.worker_id, f.last_error
          FROM observers.job_finished AS f LEFT JOIN observers.observer AS o ON o.id = f.observer_id
    ) AS a
     WHERE ($1 IS NULL OR a.state = $1)
       AND ($2 IS NULL OR a.queue = $2)
       AND ($3 IS NULL OR a.name = $3)
     ORDER BY a.id DESC
     LIMIT greatest(coalesce($4, 100), 0)
$$;

-- One job with its body, wherever it is.
CREATE FUNCTION observers.job_show(id bigint)
RETURNS TABLE (id bigint, group_name text, queue text, state text, observer text,
               action_index int, event_id bigint, webhook_id text, unique_key text, body text,
               attempts int, max_attempts int, priority int, run_at timestamptz,
               created_at timestamptz, started_at timestamptz, finished_at timestamptz,
               worker_id text, last_error text, last_status int, enqueued_by text, dlq_id bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT j.id, j.group_name, j.queue, observers._job_state(j.state, j.run_at), o.name,
           j.action_index, j.event_id, j.webhook_id, j.unique_key, j.body, j.attempts,
           j.max_attempts, j.priority, j.run_at, j.created_at, j.started_at, NULL::timestamptz,
           j.worker_id, j.last_error, j.last_status, j.enqueued_by, NULL::bigint
      FROM observers.job AS j LEFT JOIN observers.observer AS o ON o.id = j.observer_id
     WHERE j.id = $1
    UNION ALL
    SELECT f.id, f.group_name, f.queue, f.state, o.name, f.action_index, f.event_id,
           f.webhook_id, f.unique_key, f.body, f.attempts, f.max_attempts, f.priority, f.run_at,
           f.created_at, f.started_at, f.finished_at, f.worker_id, f.last_error, f.last_status,
           f.enqueued_by, f.dlq_id
      FROM observers.job_finished AS f LEFT JOIN observers.observer AS o ON o.id = f.observer_id
     WHERE f.id = $1
$$;

-- Run a waiting job now (scheduled or retryable), or run a discarded or cancelled job again
-- (a new attempt budget, the same id, webhook-id and unique key). Returns true if it changed.
CREATE FUNCTION observers.job_retry(id bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    f observers.job_finished;
BEGIN
    UPDATE observers.job AS j SET run_at = now()
     WHERE j.id = job_retry.id AND j.state <> 'running' AND j.run_at > now();
    IF FOUND THEN
        RETURN true;
    END IF;
    IF EXISTS (SELECT 1 FROM observers.job AS j WHERE j.id = job_retry.id) THEN
        RETURN false;  -- running, or already due
    END IF;
    DELETE FROM observers.job_finished AS x
     WHERE x.id = job_retry.id AND x.state IN ('discarded', 'cancelled')
    RETURNING * INTO f;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM observers.job_finished AS x WHERE x.id = job_retry.id) THEN
            RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = format('job %s completed; it is not run again', job_retry.id),
                HINT = 'Enqueue a new job (observers.job_enqueue) to run the action again.';
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = format('job %s does not exist', coalesce(job_retry.id::text, 'NULL')),
            HINT = 'observers.job_list() lists the jobs; finished ones are kept for observers.retention.';
    END IF;
    IF f.dlq_id IS NOT NULL THEN
        DELETE FROM observers.dlq AS q WHERE q.id = f.dlq_id;
    END IF;
    INSERT INTO observers.job (id, group_name, queue, state, priority, run_at, observer_id,
                               action_index, event_id, day, webhook_id, unique_key, body,
                               attempts, max_attempts, last_error, last_status, worker_id,
                               created_at, enqueued_by)
    VALUES (f.id, f.group_name, f.queue, 'available', f.priority, now(), f.observer_id,
            f.action_index, f.event_id, f.day, f.webhook_id, f.unique_key, f.body, 0,
            f.max_attempts, f.last_error, f.last_status, f.worker_id, f.created_at, f.enqueued_by);
    PERFORM pg_notify('observers_jobs', f.group_name);
    RETURN true;
END
$$;

-- Cancel a job that is not running (a running one finishes, or is rescued, first). Returns
-- true if it was cancelled.
CREATE FUNCTION observers.job_cancel(id bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_state text;
BEGIN
    SELECT j.state INTO v_state FROM observers.job AS j WHERE j.id = job_cancel.id FOR UPDATE;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM observers.job_finished AS f WHERE f.id = job_cancel.id) THEN
            RETURN false;  -- already finished
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = format('job %s does not exist', coalesce(job_cancel.id::text, 'NULL'));
    END IF;
    IF v_state = 'running' THEN
        RAISE EXCEPTION USING ERRCODE = 'object_in_use',
            MESSAGE = format('job %s is running', job_cancel.id),
            HINT = 'A running job cannot be cancelled; it finishes (or is rescued and retried) first.';
    END IF;
    PERFORM observers._job_close(job_cancel.id, 'cancelled', 'cancelled by ' || observers._calling_role()::regrole::text, NULL);
    RETURN true;
END
$$;

-- Per group and queue: jobs by state, and the age of the oldest due job (queue wait).
CREATE FUNCTION observers.job_stats()
RETURNS TABLE (group_name text, queue text, paused boolean, available bigint, scheduled bigint,
               running bigint, retryable bigint, completed bigint, discarded bigint,
               cancelled bigint, oldest_due_age interval)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH hot AS (
        SELECT j.group_name, j.queue,
               count(*) FILTER (WHERE j.state = 'available' AND j.run_at <= now()) AS available,
               count(*) FILTER (WHERE j.state = 'available' AND j.run_at > now()) AS scheduled,
               count(*) FILTER (WHERE j.state = 'running') AS running,
               count(*) FILTER (WHERE j.state = 'retryable') AS retryable,
               now() - min(j.run_at) FILTER (WHERE j.state <> 'running' AND j.run_at <= now()) AS oldest
          FROM observers.job AS j GROUP BY 1, 2
    ), done AS (
        SELECT f.group_name, f.queue,
               count(*) FILTER (WHERE f.state = 'completed') AS completed,
               count(*) FILTER (WHERE f.state = 'discarded') AS discarded,
               count(*) FILTER (WHERE f.state = 'cancelled') AS cancelled
          FROM observers.job_finished AS f GROUP BY 1, 2
    ), keys AS (
        SELECT group_name, queue FROM hot UNION SELECT group_name, queue FROM done
        UNION SELECT group_name, queue FROM observers.job_queue_paused
    )
    SELECT k.group_name, k.queue,
           EXISTS (SELECT 1 FROM observers.job_queue_paused AS p
                    WHERE p.group_name = k.group_name AND p.queue = k.queue),
           coalesce(h.available, 0), coalesce(h.scheduled, 0), coalesce(h.running, 0),
           coalesce(h.retryable, 0), coalesce(d.completed, 0), coalesce(d.discarded, 0),
           coalesce(d.cancelled, 0), h.oldest
      FROM keys AS k
      LEFT JOIN hot AS h ON h.group_name = k.group_name AND h.queue = k.queue
      LEFT JOIN done AS d ON d.group_name = k.group_name AND d.queue = k.queue
     ORDER BY 1, 2
$$;

CREATE FUNCTION observers.job_queue_pause(queue text, group_name text DEFAULT 'default')
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO observers.job_queue_paused (group_name, queue, paused_by)
    VALUES ($2, $1, observers._calling_role()::regrole::text)
    ON CONFLICT DO NOTHING
    RETURNING true
$$;

CREATE FUNCTION observers.job_queue_resume(queue text, group_name text DEFAULT 'default')
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM observers.job_queue_paused AS p WHERE p.group_name = $2 AND p.queue = $1;
    IF FOUND THEN
        PERFORM pg_notify('observers_jobs', $2);
        RETURN true;
    END IF;
    RETURN false;
END
$$;
