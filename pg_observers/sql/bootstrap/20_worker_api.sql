-- pg_observers: the worker API (docs/ARCHITECTURE.md, "SQL contract between extension and worker")
--
-- Every function is SECURITY DEFINER with search_path = pg_catalog, pg_temp and fully
-- qualified names inside. Fenced functions raise SQLSTATE OB001 ("fenced: ...") when the
-- caller's epoch is not the group's current lease epoch or the lease has expired.

-- Fencing: lock the group's lease row (FOR SHARE, so a takeover by another worker waits for
-- this transaction) and check the caller's epoch against it.
CREATE FUNCTION observers._fence(p_group text, p_epoch bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    l observers.leader_lease;
BEGIN
    SELECT * INTO l FROM observers.leader_lease WHERE group_name = p_group FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'OB001',
            MESSAGE = format('fenced: group "%s" has no leader lease', p_group),
            HINT = 'Call observers.lease_acquire() first and pass the epoch it returns.';
    END IF;
    IF p_epoch IS DISTINCT FROM l.epoch THEN
        RAISE EXCEPTION USING ERRCODE = 'OB001',
            MESSAGE = format('fenced: epoch %s is not the current lease epoch %s of group "%s" (held by "%s")',
                             coalesce(p_epoch::text, 'NULL'), l.epoch, p_group, l.worker_id),
            HINT = 'Another worker took over the lease; stop processing and re-acquire it.';
    END IF;
    IF l.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION USING ERRCODE = 'OB001',
            MESSAGE = format('fenced: the lease of group "%s" (epoch %s) expired at %s UTC',
                             p_group, l.epoch,
                             to_char(l.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')),
            HINT = 'Renew the lease (observers.lease_acquire) more often than its ttl.';
    END IF;
END
$$;

CREATE FUNCTION observers._require_text(p_what text, p_value text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_value IS NULL OR btrim(p_value) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s must be a non-empty string', p_what);
    END IF;
END
$$;

-- Leader lease -------------------------------------------------------------------------------

-- Is the database session (pid, backend_start) still connected? The start time tells a new
-- session that reuses the pid from the one that held the lease. When in doubt the answer is
-- "connected" (a live leader must never be displaced). Counted as connected, so that only the
-- lease's expiry frees it: a session that is not known (NULL pid or start time), and a session older
-- than the server's current start (PostgreSQL restarted: every session ended at once, the leader's
-- included, and the leader is reconnecting to renew its lease; a standby must not take the lease
-- over just because it reconnected first).
CREATE FUNCTION observers._session_alive(p_pid integer, p_backend_start timestamptz)
RETURNS boolean
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p_pid IS NULL
        OR p_backend_start IS NULL
        OR p_backend_start < pg_catalog.pg_postmaster_start_time()
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(p_pid) AS a
                    WHERE a.pid = p_pid
                      -- NULL: the function's owner may not see that session's details (it is
                      -- not a superuser nor in pg_read_all_stats): the session exists, keep it
                      AND (a.backend_start IS NULL OR a.backend_start = p_backend_start))
$$;

-- Returns the epoch if the caller now holds the lease: the same epoch when it renewed its own
-- unexpired lease, epoch + 1 when it took over a lease that was absent, expired, or held by a
-- database session that has ended (its holder crashed or lost its connection: a standby need
-- not wait for the TTL; not after a restart of PostgreSQL, see _session_alive). NULL when another worker holds an unexpired lease from a live session:
-- a live leader is never displaced before its lease expires.
--
-- The lease records the caller's session (pg_backend_pid()): call it on a connection of its own
-- that lives as long as the worker and does nothing else, so that the session ends when the
-- worker does. While the leader is alive a standby's call only reads (no row lock, no xid), so
-- standbys may poll every few hundred milliseconds.
CREATE FUNCTION observers.lease_acquire(group_name text, worker_id text, ttl interval)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_now   timestamptz := clock_timestamp();
    v_epoch bigint;
    v_pid   integer := pg_backend_pid();
    v_start timestamptz;
    cur     observers.leader_lease;
BEGIN
    PERFORM observers._require_text('group_name', lease_acquire.group_name);
    PERFORM observers._require_text('worker_id', lease_acquire.worker_id);
    IF ttl IS NULL OR ttl <= interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('ttl must be a positive interval, got %s', coalesce(ttl::text, 'NULL'));
    END IF;
    -- Backend status is cached per transaction: look at the sessions as they are now.
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    -- The caller is alive: its deduplication claims are its own again (see below; deletes
    -- nothing, and so writes nothing, unless it was listed)
    DELETE FROM observers.dedup_dead_owner AS z WHERE z.owner = lease_acquire.worker_id;

    -- Fast path for standbys: another worker's live lease, read without locking anything.
    SELECT * INTO cur FROM observers.leader_lease AS x WHERE x.group_name = lease_acquire.group_name;
    IF FOUND AND cur.worker_id <> lease_acquire.worker_id AND cur.expires_at > v_now
       AND observers._session_alive(cur.holder_pid, cur.holder_backend_start) THEN
        RETURN NULL;
    END IF;

    SELECT a.backend_start INTO v_start FROM pg_catalog.pg_stat_get_activity(v_pid) AS a;
    -- The row lock of ON CONFLICT makes concurrent callers re-check the WHERE against the
    -- newest row: of two standbys that both saw a dead holder, only the first takes over.
    INSERT INTO observers.leader_lease AS l
           (group_name, worker_id, epoch, acquired_at, renewed_at, expires_at,
            holder_pid, holder_backend_start)
    VALUES (lease_acquire.group_name, lease_acquire.worker_id, 1, v_now, v_now, v_now + ttl,
            v_pid, v_start)
    ON CONFLICT (group_name) DO UPDATE
       SET epoch       = CASE WHEN l.worker_id = excluded.worker_id AND l.expires_at > v_now
                              THEN l.epoch ELSE l.epoch + 1 END,
           acquired_at = CASE WHEN l.worker_id = excluded.worker_id AND l.expires_at > v_now
                              THEN l.acquired_at ELSE v_now END,
           worker_id   = excluded.worker_id,
           renewed_at  = v_now,
           expires_at  = excluded.expires_at,
           holder_pid  = excluded.holder_pid,
           holder_backend_start = excluded.holder_backend_start
     WHERE l.worker_id = excluded.worker_id OR l.expires_at <= v_now
        OR NOT observers._session_alive(l.holder_pid, l.holder_backend_start)
    RETURNING l.epoch INTO v_epoch;
    -- Taken over from another worker whose session has ended (it crashed): the pairs it had
    -- claimed for deduplication need not wait for their claims to expire (the action's timeout
    -- plus grace, seconds during which the new leader's batch could not close): dedup_claim
    -- treats the claims of a listed owner as expired, until that worker calls here again.
    IF v_epoch IS NOT NULL AND cur.worker_id IS NOT NULL AND cur.worker_id <> lease_acquire.worker_id
       AND NOT observers._session_alive(cur.holder_pid, cur.holder_backend_start) THEN
        INSERT INTO observers.dedup_dead_owner AS z (owner, since) VALUES (cur.worker_id, v_now)
        ON CONFLICT (owner) DO UPDATE SET since = excluded.since;
    END IF;
    RETURN v_epoch;
END
$$;

-- Expire the lease now if the caller still holds it with that epoch.
CREATE FUNCTION observers.lease_release(group_name text, worker_id text, epoch bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    UPDATE observers.leader_lease AS l
       SET expires_at = v_now, renewed_at = v_now
     WHERE l.group_name = lease_release.group_name
       AND l.worker_id = lease_release.worker_id
       AND l.epoch = lease_release.epoch
       AND l.expires_at > v_now;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- wake the group's standbys (they LISTEN observers_lease): they take the lease at once
    -- instead of at their next poll (delivered at commit; never on the users' write path)
    PERFORM pg_notify('observers_lease', lease_release.group_name);
    RETURN true;
END
$$;

-- Batches ------------------------------------------------------------------------------------
--
-- The batch of a group is the set of its observers' events visible in snap_hi and not visible
-- in snap_lo. Batches are found and paged through the id index only (see the id floors below):
-- a BRIN index on txid does not help with the newest, not yet summarised pages.

-- Open (or resume) the group's batch.
--
-- Where a batch's ids start, without an index on txid ("id floors"):
-- every event of the batch (visible in snap_hi, not in snap_lo) was written by a transaction T
-- with T.xid >= pg_snapshot_xmin(snap_lo), and T got its xid before its capture trigger drew
-- the ids (the trigger runs AFTER the row was written). batch_open reads the sequence *before*
-- its own transaction gets an xid X, and records the pair (X, seq). Any transaction with an xid
-- greater than X got it after that read, so all its events have ids greater than seq. Hence,
-- for the latest recorded pair with X < pg_snapshot_xmin(snap_lo), every event of the batch has
-- id > seq: the batch starts right there (last_id := seq), and max_id is found by a short
-- backward scan of the id index. Keeping an older pair only lowers the floor (slower, never
-- wrong), so the history is pruned to the pairs that can still be chosen and capped.
-- This relies on ids being handed out in the order they are drawn, by every backend: capture/ids.rs
-- (observers.event_id_seq has CACHE 1: per-backend caches would hand out old values).
CREATE FUNCTION observers.batch_open(group_name text, epoch bigint)
RETURNS TABLE (snap_lo pg_snapshot, snap_hi pg_snapshot, last_id bigint, max_id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    c       observers.checkpoint;
    v_seq   bigint;
    v_xid   xid8;
    v_hi    pg_snapshot;
    v_max   bigint;
    v_floor bigint := 0;
    v_pick  int := 0;
    v_xids  xid8[];
    v_seqs  bigint[];
BEGIN
    -- First, before this transaction writes anything: the last id handed out, then our own xid.
    -- _event_id_high() reads it under the lock ids are handed out with (capture/ids.rs): the
    -- shared counter, or pg_sequence_last_value() when this database has no block of ids in
    -- shared memory. A plain SELECT FROM the sequence does not: it sees the end of the current
    -- block of ids: a floor that high would skip events.
    v_seq := observers._event_id_high();
    IF pg_current_xact_id_if_assigned() IS NULL THEN
        v_xid := pg_current_xact_id();   -- assigned now, after the read: the pair is valid
    END IF;                              -- else the caller wrote earlier: record no pair

    PERFORM observers._fence(batch_open.group_name, batch_open.epoch);

    INSERT INTO observers.checkpoint (group_name, epoch)
    VALUES (batch_open.group_name, batch_open.epoch)
    ON CONFLICT (group_name) DO NOTHING;
    SELECT * INTO STRICT c FROM observers.checkpoint AS k
     WHERE k.group_name = batch_open.group_name FOR UPDATE;

    IF c.snap_hi IS NULL THEN
        v_hi := pg_current_snapshot();

        -- the floor: the latest pair older than every transaction the batch can contain
        FOR i IN REVERSE coalesce(array_length(c.floor_xids, 1), 0) .. 1 LOOP
            IF c.floor_xids[i] < pg_snapshot_xmin(c.snap_lo) THEN
                v_pick := i;
                v_floor := c.floor_seqs[i];
                EXIT;
            END IF;
        END LOOP;
        -- keep the chosen pair and the newer ones, then the pair recorded now; cap at 32 by
        -- dropping the second oldest (a lower floor stays correct)
        v_xids := c.floor_xids[greatest(v_pick, 1):];
        v_seqs := c.floor_seqs[greatest(v_pick, 1):];
        IF v_xid IS NOT NULL THEN
            v_xids := v_xids || v_xid;
            v_seqs := v_seqs || v_seq;
        END IF;
        WHILE array_length(v_xids, 1) > 32 LOOP
            v_xids := v_xids[1:1] || v_xids[3:];
            v_seqs := v_seqs[1:1] || v_seqs[3:];
        END LOOP;

        -- Self-check, cheap (an index range of 256 ids): no event of this batch may sit at or
        -- just below the floor. If one does, the floor reasoning was wrong for this batch: say
        -- so loudly and start the batch at id 0 (slow once, never a gap).
        IF v_floor > 0 AND EXISTS (
               SELECT 1 FROM observers.event AS e
                WHERE e.id > v_floor - 256 AND e.id <= v_floor
                  AND e.observer_id IN (SELECT o.id FROM observers.observer AS o
                                         WHERE o.group_name = batch_open.group_name)
                  AND pg_visible_in_snapshot(e.txid, v_hi)
                  AND NOT pg_visible_in_snapshot(e.txid, c.snap_lo)) THEN
            RAISE WARNING 'pg_observers: id floor % of group "%" is above an event of the batch; scanning the batch from id 0',
                v_floor, batch_open.group_name
                USING HINT = 'Nothing is lost. Please report this with the output of SELECT * FROM observers.checkpoint.';
            v_floor := 0;
        END IF;

        -- the batch's last id: a backward scan of the id index that stops at the first event
        -- of the batch (only events committed after snap_hi or by other groups lie above it)
        SELECT e.id INTO v_max
          FROM observers.event AS e
         WHERE e.id > v_floor
           AND e.observer_id IN (SELECT o.id FROM observers.observer AS o
                                  WHERE o.group_name = batch_open.group_name)
           AND pg_visible_in_snapshot(e.txid, v_hi)
           AND NOT pg_visible_in_snapshot(e.txid, c.snap_lo)
         ORDER BY e.id DESC
         LIMIT 1;

        UPDATE observers.checkpoint AS k
           SET snap_hi = v_hi, max_id = v_max, last_id = v_floor,
               floor_xids = v_xids, floor_seqs = v_seqs,
               epoch = batch_open.epoch, updated_at = now()
         WHERE k.group_name = batch_open.group_name
        RETURNING * INTO c;
    END IF;

    snap_lo := c.snap_lo;
    snap_hi := c.snap_hi;
    last_id := c.last_id;
    max_id  := c.max_id;
    RETURN NEXT;
END
$$;

-- The webhook body of an event (SPEC section 4), keys in this order:
-- id, observer, op, table, new, old, changed, txid, captured_at.
-- A plain SQL expression so that the planner inlines it into observers.batch_fetch().
CREATE FUNCTION observers._event_body(p_id bigint, p_observer text, p_op text, p_table text,
                                      p_new jsonb, p_old jsonb, p_changed text[], p_txid xid8,
                                      p_captured_at timestamptz)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT pg_catalog.json_build_object(
               'id', p_id,
               'observer', p_observer,
               'op', p_op,
               'table', p_table,
               'new', p_new,
               'old', p_old,
               'changed', p_changed,
               'txid', p_txid::text::bigint,
               'captured_at', pg_catalog.to_char(p_captured_at AT TIME ZONE 'UTC',
                                                 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
           )::text
$$;

-- The events of an open batch after `after_id`, up to `max_id`, in id order, at most `lim`.
-- body is the webhook JSON (SPEC section 4, observers._event_body).
CREATE FUNCTION observers.batch_fetch(group_name text, snap_lo pg_snapshot, snap_hi pg_snapshot,
                                      after_id bigint, max_id bigint, lim int)
RETURNS TABLE (id bigint, observer_id int, ordering_key text, captured_at timestamptz, body text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    -- `table` and the ordering key use the names the event was captured under (h: the first
    -- observer_names row at or above the event's id), else the current ones
    SELECT e.id,
           e.observer_id,
           CASE WHEN coalesce(h.ordering_key, o.ordering_key) IS NOT NULL THEN
               (SELECT jsonb_agg(coalesce(e.new, e.old) -> k.col ORDER BY k.ord)
                  FROM unnest(coalesce(h.ordering_key, o.ordering_key)) WITH ORDINALITY AS k(col, ord))::text
           END,
           e.captured_at,
           observers._event_body(e.id, o.name, e.op,
                                 coalesce(h.table_label, n.nspname || '.' || c.relname,
                                          o.table_name::oid::text),
                                 e.new, e.old, e.changed, e.txid, e.captured_at)
      FROM observers.event AS e
      JOIN observers.observer AS o ON o.id = e.observer_id
      LEFT JOIN pg_class AS c ON c.oid = o.table_name
      LEFT JOIN pg_namespace AS n ON n.oid = c.relnamespace
      LEFT JOIN LATERAL (SELECT x.table_label, x.ordering_key
                           FROM observers.observer_names AS x
                          WHERE x.observer_id = e.observer_id AND x.until_id >= e.id
                          ORDER BY x.until_id
                          LIMIT 1) AS h ON true
     WHERE o.group_name = $1
       AND e.id > $4
       AND e.id <= $5
       AND pg_visible_in_snapshot(e.txid, $3)
       AND NOT pg_visible_in_snapshot(e.txid, $2)
     ORDER BY e.id
     LIMIT $6
$$;

-- Record progress inside the open batch; last_id only moves forward.
CREATE FUNCTION observers.checkpoint_save(group_name text, epoch bigint, last_id bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    c observers.checkpoint;
BEGIN
    PERFORM observers._fence(checkpoint_save.group_name, checkpoint_save.epoch);
    SELECT * INTO c FROM observers.checkpoint AS k
     WHERE k.group_name = checkpoint_save.group_name FOR UPDATE;
    IF NOT FOUND OR c.snap_hi IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('group "%s" has no open batch', checkpoint_save.group_name),
            HINT = 'Call observers.batch_open() first.';
    END IF;
    IF checkpoint_save.last_id IS NULL
       OR checkpoint_save.last_id > coalesce(c.max_id, 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('last_id %s is outside the open batch of group "%s" (max_id %s)',
                             coalesce(checkpoint_save.last_id::text, 'NULL'),
                             checkpoint_save.group_name, coalesce(c.max_id::text, 'NULL'));
    END IF;
    UPDATE observers.checkpoint AS k
       SET last_id = greatest(k.last_id, checkpoint_save.last_id),
           epoch = checkpoint_save.epoch,
           updated_at = now()
     WHERE k.group_name = checkpoint_save.group_name;
END
$$;

-- Finish the open batch: snap_lo := snap_hi, and no batch is open any more.
CREATE FUNCTION observers.batch_close(group_name text, epoch bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM observers._fence(batch_close.group_name, batch_close.epoch);
    UPDATE observers.checkpoint AS k
       SET snap_lo = k.snap_hi, snap_hi = NULL, last_id = 0, max_id = NULL,
           epoch = batch_close.epoch, updated_at = now()
     WHERE k.group_name = batch_close.group_name
       AND k.snap_hi IS NOT NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('group "%s" has no open batch', batch_close.group_name),
            HINT = 'Call observers.batch_open() first.';
    END IF;
END
$$;

-- Dead letters and heartbeats ----------------------------------------------------------------

CREATE FUNCTION observers.dlq_add(group_name text, epoch bigint, event_id bigint, observer_id int,
                                  action_index int, action_type text, webhook_id text,
                                  payload jsonb, error text, attempts int, last_status int)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    v_id bigint;
BEGIN
    PERFORM observers._fence(group_name, epoch);
    IF event_id IS NULL OR observer_id IS NULL OR action_index IS NULL OR attempts IS NULL
       OR payload IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'event_id, observer_id, action_index, attempts and payload must not be NULL';
    END IF;
    PERFORM observers._require_text('action_type', action_type);
    PERFORM observers._require_text('error', error);
    INSERT INTO observers.dlq (group_name, event_id, observer_id, action_index, action_type,
                               webhook_id, payload, error, attempts, last_status, epoch)
    VALUES (group_name, event_id, observer_id, action_index, action_type,
            webhook_id, payload, error, attempts, last_status, epoch)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

CREATE FUNCTION observers.heartbeat(group_name text, worker_id text, info jsonb)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
BEGIN
    PERFORM observers._require_text('group_name', group_name);
    PERFORM observers._require_text('worker_id', worker_id);
    INSERT INTO observers.worker AS w (group_name, worker_id, info, started_at, last_seen)
    VALUES (group_name, worker_id, coalesce(info, '{}'), now(), now())
    ON CONFLICT ON CONSTRAINT worker_pkey DO UPDATE
       SET info = excluded.info, last_seen = excluded.last_seen;
END
$$;

-- What the worker runs: the observers of a group.
CREATE FUNCTION observers.observer_definitions(group_name text)
RETURNS TABLE (id int, name text, table_name text, actions jsonb, ordering_key text[], enabled bool)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.id, o.name,
           coalesce(n.nspname || '.' || c.relname, o.table_name::oid::text),
           o.actions, o.ordering_key, o.enabled
      FROM observers.observer AS o
      LEFT JOIN pg_class AS c ON c.oid = o.table_name
      LEFT JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE o.group_name = $1
     ORDER BY o.id
$$;
