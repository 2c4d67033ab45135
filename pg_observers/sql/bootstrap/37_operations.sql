-- pg_observers: the operators' control plane (SPEC section 5). See docs/SQL.md ("Operating").
--
--   observers.status()             one row per observer: backlog, checkpoint, leader, workers,
--                                  dead letters, pairs waiting for redelivery, open breakers,
--                                  observers a running worker cannot build (broken)
--   observers.dlq_list/dlq_show/dlq_stats          read the dead-letter queue
--   observers.dlq_retry/dlq_retry_all              queue dead letters for redelivery
--   observers.dlq_purge                            delete dead letters (a filter is required)
--   observers.debug_event(id)      one event end to end: matching, attempts, dedup, DLQ
--   observers.replay(observer, from_id, to_id, force)   deliver past events again
--   observers.attempt              the attempt log the worker writes (one row per attempt)
--
-- Redelivery (dlq_retry, replay) goes through observers.parked (36_parked.sql): the leader of
-- the observer's group delivers those rows with the same webhook-id, through the same layers.
-- Everything here that reads payloads or changes state is for observers_admin only
-- (90_privileges.sql); every function pins search_path. The ones that scan the outbox or the
-- DLQ also set jit = off: their cost estimates grow with the backlog, and JIT compilation then
-- costs far more than the scan (status() on a 200,000-event backlog: 1.2 s with JIT, 42 ms
-- without).

-- The attempt log ----------------------------------------------------------------------------

-- One row per attempt the worker made (delivered, failed and retried, failed for good).
-- Written in batches with asynchronous commit: it is a diagnostic record, not part of the
-- delivery guarantee (a crash can lose its last fraction of a second; the delivery state
-- itself is in the checkpoint, the DLQ and observers.parked). Partitioned by day (UTC) on `at`
-- like the outbox: observers.maintain() creates the partitions ahead and drops a whole day once
-- it is older than observers.retention (no DELETE, no bloat).
CREATE TABLE observers.attempt (
    event_id     bigint      NOT NULL,
    observer_id  integer     NOT NULL,
    action_index integer     NOT NULL,
    attempt      integer     NOT NULL,   -- attempt number (a DLQ retry or replay starts at 1 again)
    at           timestamptz NOT NULL,   -- when the attempt started
    duration_ms  real        NOT NULL,
    status       integer,                -- HTTP status, when a response was received
    outcome      text        NOT NULL
                 CONSTRAINT attempt_outcome_valid CHECK (outcome IN ('delivered', 'retry', 'failed')),
    error        text,
    worker_id    text        NOT NULL
) PARTITION BY RANGE (at);
CREATE TABLE observers.attempt_default PARTITION OF observers.attempt DEFAULT;
CREATE INDEX attempt_event_idx ON observers.attempt (event_id);
COMMENT ON TABLE observers.attempt IS
    'Every delivery attempt (written by the worker, asynchronously; trimmed after observers.retention). Read it with observers.debug_event().';

-- The worker appends attempts, batched: element i of every array describes one attempt.
CREATE FUNCTION observers.attempt_add(worker_id text, event_ids bigint[], observer_ids int[],
                                      action_indexes int[], attempts int[], ats timestamptz[],
                                      durations_ms real[], statuses int[], outcomes text[],
                                      errors text[])
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    v_n     int := coalesce(cardinality(event_ids), 0);
    v_count bigint;
BEGIN
    PERFORM observers._require_text('worker_id', worker_id);
    IF coalesce(cardinality(observer_ids), 0) <> v_n OR coalesce(cardinality(action_indexes), 0) <> v_n
       OR coalesce(cardinality(attempts), 0) <> v_n OR coalesce(cardinality(ats), 0) <> v_n
       OR coalesce(cardinality(durations_ms), 0) <> v_n OR coalesce(cardinality(statuses), 0) <> v_n
       OR coalesce(cardinality(outcomes), 0) <> v_n OR coalesce(cardinality(errors), 0) <> v_n THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'attempt_add: every array must have one element per attempt';
    END IF;
    INSERT INTO observers.attempt (event_id, observer_id, action_index, attempt, at, duration_ms,
                                   status, outcome, error, worker_id)
    SELECT u.e, u.o, u.a, u.n, u.t, u.d, u.s, u.oc, u.err, worker_id
      FROM unnest(event_ids, observer_ids, action_indexes, attempts, ats, durations_ms, statuses,
                  outcomes, errors) AS u(e, o, a, n, t, d, s, oc, err);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Called by maintain(): partitions for today - 1 .. today + 7; a past day goes once all of it
-- is older than the retention (`p_cutoff`); rows in attempt_default (only when maintain() did
-- not run for a week) are deleted past the cutoff. Returns a summary fragment.
CREATE FUNCTION observers._maintain_attempts(p_cutoff timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_today   date := (now() AT TIME ZONE 'UTC')::date;
    v_created int := 0;
    v_dropped int := 0;
    v_deleted bigint;
    r         record;
BEGIN
    FOR i IN -1..7 LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM observers.attempt_default
                               WHERE at >= (v_today + i)::timestamp AT TIME ZONE 'UTC'
                                 AND at < (v_today + i + 1)::timestamp AT TIME ZONE 'UTC');
        IF observers._create_day_partition('observers.attempt', 'attempt_p', v_today + i) THEN
            v_created := v_created + 1;
        END IF;
    END LOOP;
    FOR r IN SELECT * FROM observers._day_partitions('observers.attempt', 'attempt_p') LOOP
        CONTINUE WHEN (r.day + 1)::timestamp AT TIME ZONE 'UTC' > p_cutoff;
        IF observers._drop_day_partition(r.rel) THEN
            v_dropped := v_dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM observers.attempt_default AS a WHERE a.at < p_cutoff;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN format('attempts: created %s, dropped %s partitions, deleted %s old rows from attempt_default',
                  v_created, v_dropped, v_deleted);
END
$$;

-- Shared pieces ------------------------------------------------------------------------------

-- The idempotency key (webhook-id) of a pair: evt_<installation>_<event id>_<action index>, where
-- <installation> is the first 16 hex digits of observers.installation.id. Unique per installation
-- (two databases feeding one receiver never collide), kept across pg_dump/restore (the
-- installation id and the event id sequence are dumped), identical on every retry. The worker's
-- InstallationId::pair_id (observer-worker/src/installation.rs) computes the same; keep the two
-- identical (docs/WEBHOOKS.md).
CREATE FUNCTION observers._webhook_id(p_event_id bigint, p_action_index int)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT pg_catalog.concat('evt_',
                             pg_catalog.left(pg_catalog.replace(observers._installation_id()::text, '-', ''), 16),
                             '_', p_event_id, '_', p_action_index)
$$;

-- The deduplication key of a pair, as the worker computes it (resilience/dedup.rs PairKey).
CREATE FUNCTION observers._dedup_key(p_observer_id int, p_action_index int, p_event_id bigint)
RETURNS bytea
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT sha256(convert_to('fraiseql-observers/dedup/v1', 'UTF8') || '\x00'::bytea
                  || uuid_send(i.id) || int4send(p_observer_id) || int8send(p_action_index::bigint)
                  || int8send(p_event_id))
      FROM observers.installation AS i
     LIMIT 1
$$;

-- Where an event stands against its group's cursor:
--   finished        the cursor passed it: each action was delivered, skipped as already done,
--                   dead-lettered or queued in observers.parked
--   in_open_batch   in the batch the leader is working on, not reached yet
--   pending         not yet in a batch (or its transaction is still open)
CREATE FUNCTION observers._event_state(p_txid xid8, p_id bigint, k observers.checkpoint)
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT CASE
        WHEN k.group_name IS NULL THEN 'pending'
        WHEN p_txid < pg_catalog.pg_snapshot_xmin(k.snap_lo)
             OR pg_catalog.pg_visible_in_snapshot(p_txid, k.snap_lo) THEN 'finished'
        WHEN k.snap_hi IS NOT NULL AND pg_catalog.pg_visible_in_snapshot(p_txid, k.snap_hi) THEN
             CASE WHEN p_id <= k.last_id THEN 'finished' ELSE 'in_open_batch' END
        ELSE 'pending'
    END
$$;

-- Dead letters matching the operators' filters (NULL = no filter). error_contains is a
-- case-insensitive substring. An unknown observer name is an error, not an empty result.
CREATE FUNCTION observers._dlq_matching(p_observer text, p_since timestamptz,
                                        p_before timestamptz, p_error_contains text)
RETURNS SETOF observers.dlq
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_observer_id int;
BEGIN
    IF p_observer IS NOT NULL THEN
        v_observer_id := (observers._find_observer(p_observer)).id;
    END IF;
    RETURN QUERY
        SELECT q.* FROM observers.dlq AS q
         WHERE (v_observer_id IS NULL OR q.observer_id = v_observer_id)
           AND (p_since IS NULL OR q.created_at >= p_since)
           AND (p_before IS NULL OR q.created_at < p_before)
           AND (p_error_contains IS NULL
                OR strpos(lower(q.error), lower(p_error_contains)) > 0)
         ORDER BY q.id;
END
$$;

-- status() -----------------------------------------------------------------------------------

-- One row per observer: where its group's delivery stands.
--   backlog                  events of the observer its group's cursor has not passed
--   oldest_undelivered_age   age of the oldest of them
--   checkpoint               the group's cursor (snap_lo, open batch snap_hi, last_id/max_id)
--   leader                   worker holding the group's unexpired lease from a connected
--                            session (NULL if none: no lease, expired, or its holder is gone)
--   dlq_count, last_error    dead letters of the observer, the latest error and when
--   workers, last_heartbeat  running workers of the group seen in the last 30 s (a worker that
--                            stopped cleanly says so in its last heartbeat), the newest heartbeat
--   parked                   the observer's pairs waiting for redelivery (observers.parked)
--   open_breakers            destinations of the group a live worker reports not closed
--   broken                   why a running worker of the group cannot build the observer's
--                            actions (unknown action type, unset ${VAR}, undeclared lookup),
--                            as the workers report it in their heartbeats (info.broken_observers);
--                            NULL when every running worker can run it. An error: the observer
--                            delivers nothing until it is fixed (its events wait in
--                            observers.parked, or, with an ordering_key, hold its group)
--   capture_error            NULL, or why the observer does not capture what it is defined to
--                            (a capture trigger dropped, disabled or renamed, its table or a
--                            `columns` column dropped: 32_integrity.sql; repair_observer() fixes
--                            what can be fixed)
--   jobs, oldest_job_age     the observer's unfinished jobs (observers.job: available, scheduled,
--                            running, retryable; 50_jobs.sql) and how long the oldest due one
--                            that is not running has waited since its run_at (NULL: none)
-- The job queue's depth for status(): observers.job is created later (50_jobs.sql), and
-- PL/pgSQL resolves it when it runs, not when status() is created.
CREATE FUNCTION observers._job_depth(p_observer int, OUT jobs bigint, OUT oldest_due timestamptz)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT count(*), min(j.run_at) FILTER (WHERE j.state <> 'running' AND j.run_at <= now())
      INTO jobs, oldest_due
      FROM observers.job AS j
     WHERE j.observer_id = p_observer;
END
$$;

CREATE FUNCTION observers.status()
RETURNS TABLE (observer text, group_name text, table_name text, enabled boolean,
               backlog bigint, oldest_undelivered_age interval,
               checkpoint text, checkpoint_updated_at timestamptz,
               leader text, lease_expires_at timestamptz,
               dlq_count bigint, last_error text, last_error_at timestamptz,
               workers int, last_heartbeat timestamptz, parked bigint, open_breakers text[],
               broken text, capture_error text, jobs bigint, oldest_job_age interval)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    SELECT o.name,
           o.group_name,
           observers._table_label(o.table_name),
           o.enabled,
           b.backlog,
           now() - b.oldest,
           CASE WHEN k.group_name IS NOT NULL THEN
               format('snap_lo=%s snap_hi=%s last_id=%s max_id=%s', k.snap_lo,
                      coalesce(k.snap_hi::text, '-'), k.last_id, coalesce(k.max_id::text, '-'))
           END,
           k.updated_at,
           CASE WHEN l.expires_at > clock_timestamp()
                     AND observers._session_alive(l.holder_pid, l.holder_backend_start)
                THEN l.worker_id END,
           l.expires_at,
           d.dlq_count,
           last.last_error,
           last.last_error_at,
           w.workers,
           w.last_heartbeat,
           p.parked,
           br.open_breakers,
           bk.broken,
           observers._capture_error(o),
           jq.jobs,
           now() - jq.oldest_due
      FROM observers.observer AS o
      LEFT JOIN observers.checkpoint AS k ON k.group_name = o.group_name
      LEFT JOIN observers.leader_lease AS l ON l.group_name = o.group_name
      CROSS JOIN LATERAL (
          SELECT count(*) AS backlog, min(e.captured_at) AS oldest
            FROM observers.event AS e
           WHERE e.observer_id = o.id
             AND e.id > observers._id_floor(k)   -- exact: 15_id_floor.sql
             AND (k.snap_lo IS NULL
                  OR (e.txid >= pg_snapshot_xmin(k.snap_lo)
                      AND NOT pg_visible_in_snapshot(e.txid, k.snap_lo)))
             AND NOT (k.snap_hi IS NOT NULL AND e.id <= k.last_id
                      AND pg_visible_in_snapshot(e.txid, k.snap_hi))
      ) AS b
      CROSS JOIN LATERAL (
          SELECT count(*) AS dlq_count FROM observers.dlq AS q WHERE q.observer_id = o.id
      ) AS d
      LEFT JOIN LATERAL (
          SELECT q.error AS last_error, q.created_at AS last_error_at
            FROM observers.dlq AS q WHERE q.observer_id = o.id ORDER BY q.id DESC LIMIT 1
      ) AS last ON true
      CROSS JOIN LATERAL (
          SELECT (count(*) FILTER (WHERE x.last_seen > now() - interval '30 seconds'
                                     AND x.info->>'role' IS DISTINCT FROM 'stopped'))::int AS workers,
                 max(x.last_seen) AS last_heartbeat
            FROM observers.worker AS x
           WHERE x.group_name = o.group_name
      ) AS w
      CROSS JOIN LATERAL (
          SELECT count(*) AS parked FROM observers.parked AS y WHERE y.observer_id = o.id
      ) AS p
      CROSS JOIN LATERAL observers._job_depth(o.id) AS jq
      CROSS JOIN LATERAL (
          SELECT coalesce(array_agg(DISTINCT z.destination ORDER BY z.destination), '{}') AS open_breakers
            FROM observers.breakers AS z
            JOIN observers.worker AS zw ON zw.group_name = z.group_name AND zw.worker_id = z.worker_id
           WHERE z.group_name = o.group_name
             AND zw.info->>'role' IS DISTINCT FROM 'stopped'
             AND z.state IS DISTINCT FROM 'closed'
             AND z.last_seen > now() - interval '30 seconds'
      ) AS br
      CROSS JOIN LATERAL (
          -- text comparisons: a malformed report must not make status() fail
          SELECT string_agg(DISTINCT coalesce(x.e->>'problem', 'broken (no reason reported)'), '; '
                            ORDER BY coalesce(x.e->>'problem', 'broken (no reason reported)')) AS broken
            FROM observers.worker AS bw
           CROSS JOIN LATERAL jsonb_array_elements(
                   CASE WHEN jsonb_typeof(bw.info->'broken_observers') = 'array'
                        THEN bw.info->'broken_observers' ELSE '[]'::jsonb END) AS x(e)
           WHERE bw.group_name = o.group_name
             AND bw.last_seen > now() - interval '30 seconds'
             AND bw.info->>'role' IS DISTINCT FROM 'stopped'
             AND x.e->>'observer_id' = o.id::text
      ) AS bk
     ORDER BY o.group_name, o.name
$$;

-- The dead-letter queue ----------------------------------------------------------------------

CREATE FUNCTION observers.dlq_list(observer text DEFAULT NULL, since timestamptz DEFAULT NULL,
                                   before timestamptz DEFAULT NULL,
                                   error_contains text DEFAULT NULL, lim int DEFAULT 100)
RETURNS TABLE (id bigint, observer text, group_name text, event_id bigint, action_index int,
               action_type text, webhook_id text, error text, attempts int, last_status int,
               created_at timestamptz, retries int, last_retry_at timestamptz,
               retry_pending boolean)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    SELECT q.id, coalesce(o.name, '#' || q.observer_id), q.group_name, q.event_id,
           q.action_index, q.action_type, q.webhook_id, q.error, q.attempts, q.last_status,
           q.created_at, q.retries, q.last_retry_at,
           EXISTS (SELECT 1 FROM observers.parked AS p WHERE p.dlq_id = q.id)
      FROM observers._dlq_matching(dlq_list.observer, dlq_list.since, dlq_list.before,
                                   dlq_list.error_contains) AS q
      LEFT JOIN observers.observer AS o ON o.id = q.observer_id
     ORDER BY q.id
     LIMIT greatest(coalesce(dlq_list.lim, 100), 0)
$$;

-- One dead letter with its payload (a composite type: the parameter keeps the name id).
CREATE TYPE observers.dlq_entry AS (
    id bigint, observer text, group_name text, event_id bigint, action_index int,
    action_type text, webhook_id text, error text, attempts int, last_status int,
    created_at timestamptz, retries int, last_retry_at timestamptz, retry_pending boolean,
    payload jsonb);

CREATE FUNCTION observers.dlq_show(id bigint)
RETURNS SETOF observers.dlq_entry
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT q.id, coalesce(o.name, '#' || q.observer_id), q.group_name, q.event_id,
               q.action_index, q.action_type, q.webhook_id, q.error, q.attempts, q.last_status,
               q.created_at, q.retries, q.last_retry_at,
               EXISTS (SELECT 1 FROM observers.parked AS p WHERE p.dlq_id = q.id),
               q.payload
          FROM observers.dlq AS q
          LEFT JOIN observers.observer AS o ON o.id = q.observer_id
         WHERE q.id = dlq_show.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = format('dead letter %s does not exist', coalesce(dlq_show.id::text, 'NULL')),
            HINT = 'observers.dlq_list() lists the dead letters; a delivered retry or a purge removes them.';
    END IF;
END
$$;

-- Queue dead letters for redelivery (same webhook-id, a fresh round of attempts). Returns how
-- many were queued; entries whose retry is already pending are skipped.
CREATE FUNCTION observers._dlq_queue(p_ids bigint[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    INSERT INTO observers.parked AS p (group_name, event_id, observer_id, action_index, action_type,
                                       webhook_id, day, destination, body, attempts, last_error,
                                       epoch, reason, dlq_id, requested_by)
    SELECT DISTINCT ON (q.event_id, q.observer_id, q.action_index)
           o.group_name, q.event_id, q.observer_id, q.action_index, q.action_type,
           coalesce(q.webhook_id, observers._webhook_id(q.event_id, q.action_index)),
           coalesce((SELECT (e.captured_at AT TIME ZONE 'UTC')::date FROM observers.event AS e
                      WHERE e.id = q.event_id LIMIT 1),
                    (q.created_at AT TIME ZONE 'UTC')::date),
           NULL, q.payload::text, 0, q.error, q.epoch, 'dlq_retry', q.id, session_user
      FROM observers.dlq AS q
      JOIN observers.observer AS o ON o.id = q.observer_id
     WHERE q.id = ANY (p_ids)
     ORDER BY q.event_id, q.observer_id, q.action_index, q.id DESC
    ON CONFLICT ON CONSTRAINT parked_pair_unique DO NOTHING;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

CREATE FUNCTION observers.dlq_retry(id bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_observer int;
BEGIN
    SELECT q.observer_id INTO v_observer FROM observers.dlq AS q WHERE q.id = dlq_retry.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = format('dead letter %s does not exist', coalesce(dlq_retry.id::text, 'NULL')),
            HINT = 'observers.dlq_list() lists the dead letters; a delivered retry or a purge removes them.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM observers.observer AS o WHERE o.id = v_observer) THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('dead letter %s belongs to an observer that was dropped', dlq_retry.id),
            HINT = 'It cannot be delivered any more; remove it with observers.dlq_purge(ids => ARRAY[...]).';
    END IF;
    RETURN observers._dlq_queue(ARRAY[dlq_retry.id]) > 0;
END
$$;

CREATE FUNCTION observers.dlq_retry_all(observer text DEFAULT NULL, since timestamptz DEFAULT NULL,
                                        before timestamptz DEFAULT NULL,
                                        error_contains text DEFAULT NULL,
                                        dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_ids bigint[];
BEGIN
    -- entries of dropped observers and entries already queued are not retried
    SELECT coalesce(array_agg(q.id), '{}') INTO v_ids
      FROM observers._dlq_matching(dlq_retry_all.observer, dlq_retry_all.since,
                                   dlq_retry_all.before, dlq_retry_all.error_contains) AS q
     WHERE EXISTS (SELECT 1 FROM observers.observer AS o WHERE o.id = q.observer_id)
       AND NOT EXISTS (SELECT 1 FROM observers.parked AS p
                        WHERE p.group_name = (SELECT o.group_name FROM observers.observer AS o
                                               WHERE o.id = q.observer_id)
                          AND p.event_id = q.event_id AND p.observer_id = q.observer_id
                          AND p.action_index = q.action_index);
    IF coalesce(dry_run, false) THEN
        RETURN cardinality(v_ids);
    END IF;
    RETURN observers._dlq_queue(v_ids);
END
$$;

CREATE FUNCTION observers.dlq_purge(observer text DEFAULT NULL, since timestamptz DEFAULT NULL,
                                    before timestamptz DEFAULT NULL,
                                    error_contains text DEFAULT NULL, ids bigint[] DEFAULT NULL,
                                    all_entries boolean DEFAULT false,
                                    dry_run boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_ids   bigint[];
    v_count bigint;
BEGIN
    IF observer IS NULL AND since IS NULL AND before IS NULL AND error_contains IS NULL
       AND ids IS NULL AND NOT coalesce(all_entries, false) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'dlq_purge needs a filter (observer, since, before, error_contains, ids)',
            HINT = 'To delete every dead letter, call observers.dlq_purge(all_entries => true).';
    END IF;
    SELECT coalesce(array_agg(q.id), '{}') INTO v_ids
      FROM observers._dlq_matching(dlq_purge.observer, dlq_purge.since, dlq_purge.before,
                                   dlq_purge.error_contains) AS q
     WHERE dlq_purge.ids IS NULL OR q.id = ANY (dlq_purge.ids);
    IF coalesce(dry_run, false) THEN
        RETURN cardinality(v_ids);
    END IF;
    -- a pending retry of a purged entry is cancelled with it
    DELETE FROM observers.parked AS p WHERE p.dlq_id = ANY (v_ids);
    DELETE FROM observers.dlq AS q WHERE q.id = ANY (v_ids);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

CREATE FUNCTION observers.dlq_stats()
RETURNS TABLE (observer text, group_name text, entries bigint, retry_pending bigint,
               oldest timestamptz, newest timestamptz, last_error text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    SELECT coalesce(o.name, '#' || q.observer_id),
           min(q.group_name),
           count(*),
           count(*) FILTER (WHERE EXISTS (SELECT 1 FROM observers.parked AS p WHERE p.dlq_id = q.id)),
           min(q.created_at),
           max(q.created_at),
           (array_agg(q.error ORDER BY q.id DESC))[1]
      FROM observers.dlq AS q
      LEFT JOIN observers.observer AS o ON o.id = q.observer_id
     GROUP BY q.observer_id, o.name
     ORDER BY 1
$$;

-- replay() -----------------------------------------------------------------------------------

-- Deliver the observer's events with from_id <= id <= to_id again, every action, with their
-- original webhook-ids. Without force, pairs that deduplication remembers as done are skipped
-- (only when the worker runs with deduplication); with force they are delivered regardless.
-- Events already dropped from the outbox (observers.retention) cannot be replayed. Returns
-- how many pairs were queued; pairs already waiting in observers.parked are left as they are.
CREATE FUNCTION observers.replay(observer text, from_id bigint, to_id bigint,
                                 force boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    o       observers.observer;
    v_label text;
    v_count bigint;
BEGIN
    o := observers._find_observer(replay.observer);
    IF from_id IS NULL OR to_id IS NULL OR from_id > to_id THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('replay needs from_id <= to_id, got %s .. %s',
                             coalesce(from_id::text, 'NULL'), coalesce(to_id::text, 'NULL')),
            HINT = 'Event ids are observers.event.id (the "id" of the webhook body).';
    END IF;
    IF jsonb_array_length(o.actions) = 0 THEN
        RETURN 0;
    END IF;
    v_label := (SELECT n.nspname || '.' || c.relname FROM pg_class AS c
                  JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = o.table_name);
    INSERT INTO observers.parked AS p (group_name, event_id, observer_id, action_index, action_type,
                                       webhook_id, day, destination, body, attempts, epoch,
                                       reason, force, requested_by)
    SELECT o.group_name, e.id, o.id, a.idx::int - 1, coalesce(a.action->>'type', 'webhook'),
           observers._webhook_id(e.id, a.idx::int - 1),
           (e.captured_at AT TIME ZONE 'UTC')::date, NULL,
           observers._event_body(e.id, o.name, e.op,
                                 coalesce(h.table_label, v_label, o.table_name::oid::text),
                                 e.new, e.old, e.changed, e.txid, e.captured_at),
           0, 0, 'replay', coalesce(replay.force, false), session_user
      FROM observers.event AS e
     CROSS JOIN jsonb_array_elements(o.actions) WITH ORDINALITY AS a(action, idx)
      -- the table's name when the event was captured (as batch_fetch)
      LEFT JOIN LATERAL (SELECT x.table_label FROM observers.observer_names AS x
                          WHERE x.observer_id = e.observer_id AND x.until_id >= e.id
                          ORDER BY x.until_id
                          LIMIT 1) AS h ON true
     WHERE e.observer_id = o.id
       AND e.id BETWEEN from_id AND to_id
     ORDER BY e.id, a.idx
    ON CONFLICT ON CONSTRAINT parked_pair_unique DO NOTHING;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- debug_event() ------------------------------------------------------------------------------

-- One event end to end, as JSON: the event; where it stands against its group's cursor; every
-- observer of its table and whether the same row change matched it (and if not, the likely
-- reason); per action the webhook-id and what became of it; every recorded attempt; its
-- dead letters, pairs waiting in observers.parked, and the deduplication state kept in
-- PostgreSQL (the redis backend's state is not visible from SQL).
CREATE FUNCTION observers.debug_event(id bigint)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    e        observers.event;
    o        observers.observer;
    k        observers.checkpoint;
    v_state  text := 'unknown';
    v_event  jsonb;
    v_obs    jsonb := '[]';
    v_acts   jsonb := '[]';
    v_att    jsonb;
    v_dlq    jsonb;
    v_parked jsonb;
    v_dedup  jsonb := '[]';
    v_oid    int;
BEGIN
    SELECT * INTO e FROM observers.event AS x WHERE x.id = debug_event.id LIMIT 1;
    IF FOUND THEN
        SELECT * INTO o FROM observers.observer AS x WHERE x.id = e.observer_id;
        SELECT * INTO k FROM observers.checkpoint AS x WHERE x.group_name = o.group_name;
        v_state := observers._event_state(e.txid, e.id, k);
        v_oid := e.observer_id;
        v_event := jsonb_build_object(
            'id', e.id, 'observer', coalesce(o.name, '#' || e.observer_id),
            'group', o.group_name, 'op', e.op,
            'table', observers._table_label(o.table_name), 'txid', e.txid::text::bigint,
            'captured_at', e.captured_at, 'new', e.new, 'old', e.old, 'changed', e.changed);
        -- every observer of the table: did this row change match it?
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'name', x.name, 'matched', m.event_id IS NOT NULL, 'event_id', m.event_id,
                   'reason', CASE
                       WHEN m.event_id IS NOT NULL THEN 'matched'
                       WHEN x.created_at > e.captured_at THEN 'created after the event'
                       WHEN NOT x.enabled THEN 'disabled'
                       WHEN NOT (e.op = ANY (x.events)) THEN format('does not observe %s', e.op)
                       WHEN x.updated_at > e.captured_at THEN 'its definition changed after the event'
                       WHEN e.op = 'UPDATE' AND x.columns IS NOT NULL AND e.changed IS NOT NULL
                            AND NOT (e.changed && x.columns)
                           THEN format('none of its columns (%s) changed', array_to_string(x.columns, ', '))
                       WHEN x.condition IS NOT NULL
                           THEN format('its condition was false for this row: %s', x.condition)
                       WHEN x.columns IS NOT NULL
                           THEN format('none of its columns (%s) changed', array_to_string(x.columns, ', '))
                       ELSE 'not matched (no recorded reason)'
                   END) ORDER BY x.name), '[]')
          INTO v_obs
          FROM observers.observer AS x
          LEFT JOIN LATERAL (
              SELECT y.id AS event_id FROM observers.event AS y
               WHERE y.observer_id = x.id
                 AND (y.id = e.id
                      OR (y.txid = e.txid AND y.op = e.op
                          AND y.new IS NOT DISTINCT FROM e.new
                          AND y.old IS NOT DISTINCT FROM e.old))
               ORDER BY y.id LIMIT 1) AS m ON true
         WHERE x.table_name = o.table_name;
    ELSE
        -- dropped from the outbox (retention) or never existed: what else remembers it
        SELECT q.observer_id INTO v_oid FROM observers.dlq AS q WHERE q.event_id = debug_event.id LIMIT 1;
        IF v_oid IS NULL THEN
            SELECT a.observer_id INTO v_oid FROM observers.attempt AS a WHERE a.event_id = debug_event.id LIMIT 1;
        END IF;
        SELECT * INTO o FROM observers.observer AS x WHERE x.id = v_oid;
    END IF;

    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'action_index', a.action_index, 'attempt', a.attempt, 'at', a.at,
               'duration_ms', round(a.duration_ms::numeric, 1), 'status', a.status,
               'outcome', a.outcome, 'error', a.error, 'worker_id', a.worker_id)
               ORDER BY a.at, a.action_index, a.attempt), '[]')
      INTO v_att
      FROM observers.attempt AS a WHERE a.event_id = debug_event.id;

    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'id', q.id, 'action_index', q.action_index, 'error', q.error,
               'attempts', q.attempts, 'last_status', q.last_status, 'created_at', q.created_at,
               'retries', q.retries, 'last_retry_at', q.last_retry_at) ORDER BY q.id), '[]')
      INTO v_dlq
      FROM observers.dlq AS q WHERE q.event_id = debug_event.id;

    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'id', p.id, 'action_index', p.action_index, 'reason', p.reason,
               'destination', p.destination, 'attempts', p.attempts, 'last_error', p.last_error,
               'force', p.force, 'parked_at', p.parked_at) ORDER BY p.id), '[]')
      INTO v_parked
      FROM observers.parked AS p WHERE p.event_id = debug_event.id;

    IF o.id IS NOT NULL THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'action_index', a.idx - 1, 'state', CASE d.state WHEN 'd' THEN 'done'
                                                                    WHEN 'c' THEN 'claimed' END,
                   'owner', d.owner, 'expires_at', d.expires_at) ORDER BY a.idx), '[]')
          INTO v_dedup
          FROM jsonb_array_elements(o.actions) WITH ORDINALITY AS a(action, idx)
          JOIN observers.dedup AS d
            ON d.key = observers._dedup_key(o.id, a.idx::int - 1, debug_event.id)
           AND d.expires_at > now();

        -- per action: what became of it, from the most telling record
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'action_index', a.idx - 1,
                   'type', coalesce(a.action->>'type', 'webhook'),
                   'webhook_id', observers._webhook_id(debug_event.id, a.idx::int - 1),
                   'result', CASE
                       WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(v_parked) AS p
                                     WHERE (p->>'action_index')::int = a.idx - 1)
                           THEN 'waiting for redelivery (observers.parked)'
                       WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(v_dlq) AS q
                                     WHERE (q->>'action_index')::int = a.idx - 1)
                           THEN 'dead-lettered'
                       WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(v_att) AS t
                                     WHERE (t->>'action_index')::int = a.idx - 1
                                       AND t->>'outcome' = 'delivered')
                           THEN 'delivered'
                       WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(v_dedup) AS d
                                     WHERE (d->>'action_index')::int = a.idx - 1
                                       AND d->>'state' = 'done')
                           THEN 'delivered (deduplication remembers it)'
                       WHEN v_state = 'finished' THEN 'delivered (no attempt recorded)'
                       WHEN v_state = 'unknown' THEN 'unknown'
                       ELSE 'not yet delivered'
                   END) ORDER BY a.idx), '[]')
          INTO v_acts
          FROM jsonb_array_elements(o.actions) WITH ORDINALITY AS a(action, idx);
    END IF;

    RETURN jsonb_build_object(
        'event', v_event,
        'state', v_state,
        'observer', o.name,
        'observers', v_obs,
        'actions', v_acts,
        'attempts', v_att,
        'dlq', v_dlq,
        'parked', v_parked,
        'dedup', v_dedup);
END
$$;
