-- pg_observers: pairs parked while their destination's circuit breaker is open.
-- See docs/RESILIENCE.md ("Circuit breakers").
--
-- A pair whose destination's breaker is open is neither attempted nor dead-lettered: the worker
-- moves it here (a full copy of the body, the attempts it already used) and the event counts
-- as finished, so the checkpoint and every other destination keep moving. A background loop of
-- the leader delivers parked pairs once their breaker lets calls through, with the same
-- webhook-id; a pair that then fails for good goes to the dead-letter queue.
-- (Observers with an ordering_key never park: their events wait in order instead.)
--
-- The same table is the redelivery queue of the operators' functions (37_operations.sql):
-- observers.dlq_retry() queues a dead letter (reason 'dlq_retry', dlq_id set: delivered, the
-- dead letter goes; failed again, the dead letter stays with its new error), observers.replay()
-- queues past events (reason 'replay'; force = deduplication skipped). The leader's loop treats
-- all of them alike.

CREATE TABLE observers.parked (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name   text        NOT NULL,
    event_id     bigint      NOT NULL,
    observer_id  integer     NOT NULL,
    action_index integer     NOT NULL,
    action_type  text        NOT NULL,
    webhook_id   text        NOT NULL,
    day          date        NOT NULL,   -- the event's UTC capture day (its dedup partition)
    destination  text,                   -- scheme://host:port (NULL: not known yet)
    body         text        NOT NULL,   -- the exact body to send (text: key order kept)
    attempts     integer     NOT NULL,   -- attempts already used
    last_error   text,
    epoch        bigint      NOT NULL,
    parked_at    timestamptz NOT NULL DEFAULT now(),
    reason       text        NOT NULL DEFAULT 'breaker'
                 CONSTRAINT parked_reason_valid CHECK (reason IN ('breaker', 'dlq_retry', 'replay')),
    dlq_id       bigint,                 -- reason 'dlq_retry': the dead letter being retried
    force        boolean     NOT NULL DEFAULT false,  -- deliver even if it already succeeded
    requested_by text,                   -- the role that asked (dlq_retry, replay)
    CONSTRAINT parked_pair_unique UNIQUE (group_name, event_id, observer_id, action_index)
);
COMMENT ON TABLE observers.parked IS
    'Pairs waiting for their destination''s circuit breaker to close; delivered later by the leader with the same webhook-id.';
CREATE INDEX parked_destination_idx ON observers.parked (group_name, destination, id);
-- Kept by pg_dump (10_tables.sql): a restored database still delivers what was waiting, with
-- the webhook-ids stored here.
SELECT pg_catalog.pg_extension_config_dump('observers.parked', '');
SELECT pg_catalog.pg_extension_config_dump('observers.parked_id_seq', '');

-- Park pairs (fenced), batched: element i of every array describes one pair. Parking the same
-- pair again keeps one row and the larger attempt count. Returns how many were parked.
CREATE FUNCTION observers.park_add(group_name text, epoch bigint, event_ids bigint[],
                                   observer_ids int[], action_indexes int[], action_types text[],
                                   webhook_ids text[], days date[], destinations text[],
                                   bodies text[], attempts int[], last_errors text[])
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
    PERFORM observers._fence(group_name, epoch);
    IF coalesce(cardinality(observer_ids), 0) <> v_n OR coalesce(cardinality(action_indexes), 0) <> v_n
       OR coalesce(cardinality(action_types), 0) <> v_n OR coalesce(cardinality(webhook_ids), 0) <> v_n
       OR coalesce(cardinality(days), 0) <> v_n OR coalesce(cardinality(destinations), 0) <> v_n
       OR coalesce(cardinality(bodies), 0) <> v_n OR coalesce(cardinality(attempts), 0) <> v_n
       OR coalesce(cardinality(last_errors), 0) <> v_n THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'park_add: every array must have one element per pair';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(event_ids, observer_ids, action_indexes, days, bodies, attempts)
                              AS u(e, o, a, d, b, n)
                WHERE e IS NULL OR o IS NULL OR a IS NULL OR d IS NULL OR b IS NULL OR n IS NULL)
       OR EXISTS (SELECT 1 FROM unnest(action_types, webhook_ids, destinations) AS u(t, w, d)
                   WHERE coalesce(t, '') = '' OR coalesce(w, '') = '' OR coalesce(d, '') = '') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'park_add: event_id, observer_id, action_index, day, body and attempts must not be NULL; action_type, webhook_id and destination must not be empty';
    END IF;
    INSERT INTO observers.parked AS p (group_name, event_id, observer_id, action_index, action_type,
                                       webhook_id, day, destination, body, attempts, last_error, epoch)
    SELECT DISTINCT ON (u.e, u.o, u.a) group_name, u.e, u.o, u.a, u.t, u.w, u.d, u.dest, u.b, u.n,
           u.err, epoch
      FROM unnest(event_ids, observer_ids, action_indexes, action_types, webhook_ids, days,
                  destinations, bodies, attempts, last_errors)
           AS u(e, o, a, t, w, d, dest, b, n, err)
     ORDER BY u.e, u.o, u.a, u.n DESC
    ON CONFLICT ON CONSTRAINT parked_pair_unique DO UPDATE
       SET attempts = greatest(p.attempts, excluded.attempts),
           last_error = coalesce(excluded.last_error, p.last_error),
           epoch = excluded.epoch;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Parked pairs of a group, oldest first, skipping the destinations listed (their breakers are
-- still open) and the ids the caller is already working on.
CREATE FUNCTION observers.park_fetch(group_name text, skip_destinations text[], skip_ids bigint[], lim int)
RETURNS TABLE (id bigint, event_id bigint, observer_id int, action_index int, webhook_id text,
               day text, destination text, body text, attempts int, reason text, force boolean)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.id, p.event_id, p.observer_id, p.action_index, p.webhook_id,
           to_char(p.day, 'YYYY-MM-DD'), p.destination, p.body, p.attempts, p.reason, p.force
      FROM observers.parked AS p
     WHERE p.group_name = park_fetch.group_name
       AND (p.destination IS NULL OR p.destination <> ALL (coalesce(skip_destinations, '{}')))
       AND p.id <> ALL (coalesce(skip_ids, '{}'))
     ORDER BY p.id
     LIMIT lim
$$;

-- DLQ retries and replays are queued from SQL, which cannot expand the action's ${VAR} URL, so
-- their destination is NULL. The worker names it when it first fetches the row, so that
-- park_fetch skips the row like any other while that destination's breaker is open (instead of
-- it waiting inside the worker, holding a delivery slot). Only a NULL destination is set.
CREATE FUNCTION observers.park_set_destination(group_name text, parked_id bigint, destination text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE observers.parked AS p
       SET destination = $3
     WHERE p.id = $2 AND p.group_name = $1 AND p.destination IS NULL AND $3 <> ''
$$;

-- A parked pair is finished (fenced): delivered (error NULL: the row goes), or failed for good
-- (the row moves to the dead-letter queue in the same transaction). A retried dead letter
-- (dlq_id set) leaves the queue when it is delivered; when it fails again it stays, with the
-- new error and one more retry counted.
CREATE FUNCTION observers.park_finish(group_name text, epoch bigint, parked_id bigint,
                                      error text, attempts int, last_status int)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    r observers.parked;
BEGIN
    PERFORM observers._fence(group_name, epoch);
    DELETE FROM observers.parked AS p
     WHERE p.id = parked_id AND p.group_name = group_name
    RETURNING * INTO r;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF r.dlq_id IS NOT NULL THEN
        IF error IS NULL THEN
            DELETE FROM observers.dlq AS q WHERE q.id = r.dlq_id;
        ELSE
            UPDATE observers.dlq AS q
               SET error = park_finish.error,
                   attempts = q.attempts + greatest(coalesce(park_finish.attempts, 0), 0),
                   last_status = park_finish.last_status,
                   retries = q.retries + 1,
                   last_retry_at = now()
             WHERE q.id = r.dlq_id;
        END IF;
        RETURN;
    END IF;
    IF error IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO observers.dlq (group_name, event_id, observer_id, action_index, action_type,
                               webhook_id, payload, error, attempts, last_status, epoch)
    VALUES (r.group_name, r.event_id, r.observer_id, r.action_index, r.action_type,
            r.webhook_id, r.body::jsonb, error, greatest(coalesce(attempts, r.attempts), 1),
            last_status, epoch);
END
$$;

-- Circuit breakers as the workers last reported them (heartbeats, every 5s), with the pairs
-- parked for each destination. Breakers live in each worker process; a worker that stopped
-- keeps its last report here until it is seen again (see last_seen).
CREATE VIEW observers.breakers AS
SELECT w.group_name,
       w.worker_id,
       b.key                          AS destination,
       b.value->>'state'              AS state,
       (b.value->>'opened')::bigint   AS times_opened,
       (SELECT count(*) FROM observers.parked AS p
         WHERE p.group_name = w.group_name AND p.destination = b.key) AS parked,
       w.last_seen
  FROM observers.worker AS w
 CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(w.info->'breakers') = 'object'
                                    THEN w.info->'breakers' ELSE '{}'::jsonb END) AS b;
COMMENT ON VIEW observers.breakers IS
    'Circuit breaker state per worker and destination (from heartbeats), with the pairs parked for it.';
