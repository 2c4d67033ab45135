-- pg_observers: checkpoint management for operators (observers_admin)
--
--   checkpoint_show(group_name)          every group's cursor, open batch, backlog
--   checkpoint_skip(group_name, dry_run) skip a group's backlog after an incident
--
-- The backlog is counted as observers.status() counts it: the events of the group's observers
-- that the cursor does not cover yet (not visible in snap_lo, and not done inside the open
-- batch).

-- Is event (txid, id) not done yet for cursor k? (k NULL: no checkpoint, nothing is done.)
CREATE FUNCTION observers._undelivered(p_txid xid8, p_id bigint, k observers.checkpoint)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (k.snap_lo IS NULL
            OR (p_txid >= pg_snapshot_xmin(k.snap_lo)
                AND NOT pg_visible_in_snapshot(p_txid, k.snap_lo)))
       AND NOT (k.snap_hi IS NOT NULL AND p_id <= k.last_id
                AND pg_visible_in_snapshot(p_txid, k.snap_hi))
$$;

-- One row per group (the groups of the observers and of the checkpoints; one group with
-- group_name): its cursor, whether a batch is open, the backlog and the age of its oldest
-- event, when the cursor last moved. A group that has no checkpoint yet shows NULL cursor
-- columns and every captured event as backlog.
CREATE FUNCTION observers.checkpoint_show(group_name text DEFAULT NULL)
RETURNS TABLE (group_name text, snap_lo pg_snapshot, snap_hi pg_snapshot, last_id bigint,
               max_id bigint, epoch bigint, batch_open boolean, backlog bigint,
               oldest_undelivered_age interval, updated_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    WITH g AS (
        SELECT o.group_name FROM observers.observer AS o
        UNION
        SELECT k.group_name FROM observers.checkpoint AS k
    )
    SELECT g.group_name, k.snap_lo, k.snap_hi, k.last_id, k.max_id, k.epoch,
           coalesce(k.snap_hi IS NOT NULL, false),
           b.backlog, now() - b.oldest, k.updated_at
      FROM g
      LEFT JOIN observers.checkpoint AS k ON k.group_name = g.group_name
      CROSS JOIN LATERAL (
          SELECT count(*) AS backlog, min(e.captured_at) AS oldest
            FROM observers.observer AS o
            JOIN observers.event AS e ON e.observer_id = o.id
           WHERE o.group_name = g.group_name
             AND e.id > observers._id_floor(k)   -- exact: 15_id_floor.sql
             AND observers._undelivered(e.txid, e.id, k)
      ) AS b
     WHERE checkpoint_show.group_name IS NULL OR g.group_name = checkpoint_show.group_name
     ORDER BY g.group_name
$$;

-- Skip the group's backlog: move its cursor to "now" (snap_lo := pg_current_snapshot(), no
-- open batch), so that every event committed so far counts as delivered. Transactions still
-- running are not covered: their events are delivered normally once they commit.
--
-- Returns one row per observer of the group: how many of its events are (dry_run) or were
-- (applied) skipped and their id range, and the observers.replay() call that delivers them
-- again while the outbox still holds them (observers.retention). Parked pairs (retries, replays) and dead
-- letters are not touched.
--
-- dry_run (the default) only reports. Without it, fencing: the group's leader lease row is
-- locked (so a leader's fenced call in progress finishes first) and its epoch bumped, then the
-- checkpoint row is locked and moved. A leader in the middle of a batch is fenced (OB001) at its
-- next checkpoint_save/batch_close and opens a new batch from the new cursor: it can never move
-- the checkpoint back over the skip. A live leader is not refused and keeps its lease (it
-- adopts the new epoch at its next renewal), so a skip works while workers run.
CREATE FUNCTION observers.checkpoint_skip(group_name text, dry_run boolean DEFAULT true)
RETURNS TABLE (observer text, skipped bigint, from_id bigint, to_id bigint, applied boolean,
               replay text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_group text := checkpoint_skip.group_name;
    v_dry   boolean := coalesce(checkpoint_skip.dry_run, true);
    v_snap  pg_snapshot;
    v_epoch bigint;
    k       observers.checkpoint;
BEGIN
    PERFORM observers._require_text('group_name', v_group);
    IF NOT EXISTS (SELECT 1 FROM observers.observer AS o WHERE o.group_name = v_group)
       AND NOT EXISTS (SELECT 1 FROM observers.checkpoint AS c WHERE c.group_name = v_group) THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = format('group "%s" has no observers and no checkpoint', v_group),
            HINT = 'See the groups with SELECT group_name FROM observers.checkpoint_show().';
    END IF;

    IF NOT v_dry THEN
        -- fence a running leader: wait for its fenced call in progress, then change the epoch
        UPDATE observers.leader_lease AS l SET epoch = l.epoch + 1
         WHERE l.group_name = v_group
        RETURNING l.epoch INTO v_epoch;
        INSERT INTO observers.checkpoint (group_name, epoch)
        VALUES (v_group, v_epoch)
        ON CONFLICT (group_name) DO NOTHING;
        SELECT * INTO STRICT k FROM observers.checkpoint AS c
         WHERE c.group_name = v_group FOR UPDATE;
    ELSE
        SELECT * INTO k FROM observers.checkpoint AS c WHERE c.group_name = v_group;
    END IF;

    -- after the locks: everything committed before this point is covered
    v_snap := pg_current_snapshot();

    RETURN QUERY
    SELECT o.name, count(e.id), min(e.id), max(e.id), NOT v_dry,
           CASE WHEN count(e.id) > 0 THEN
               format('SELECT observers.replay(%L, %s, %s);', o.name, min(e.id), max(e.id))
           END
      FROM observers.observer AS o
      LEFT JOIN observers.event AS e
             ON e.observer_id = o.id
            AND e.id > observers._id_floor(k)
            AND pg_visible_in_snapshot(e.txid, v_snap)
            AND observers._undelivered(e.txid, e.id, k)
     WHERE o.group_name = v_group
     GROUP BY o.name
     ORDER BY o.name;

    IF NOT v_dry THEN
        UPDATE observers.checkpoint AS c
           SET snap_lo = v_snap, snap_hi = NULL, last_id = 0, max_id = NULL,
               epoch = coalesce(v_epoch, c.epoch), updated_at = now()
         WHERE c.group_name = v_group;
        RAISE NOTICE 'pg_observers: group "%" cursor moved to now; the skipped events stay replayable with observers.replay() while the outbox retains them', v_group;
    END IF;
END
$$;
