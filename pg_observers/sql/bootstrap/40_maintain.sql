-- pg_observers: outbox partition maintenance
--
-- observers.event is partitioned by day (UTC) on captured_at: observers.event_pYYYYMMDD holds
-- [YYYY-MM-DD 00:00 UTC, next day 00:00 UTC). maintain() (called by the worker, or by cron)
--   1. creates the partitions of today .. today + 7 that are missing;
--   2. drops partitions whose day ended more than observers.retention ago AND whose every
--      event every worker group has passed (no event with txid >= pg_snapshot_xmin(snap_lo)
--      of any group that has observers; a group with observers but no checkpoint yet has
--      passed nothing) and every feed has passed (observers.feed_cursor, 52_search.sql).
--      Only events above the lowest id floor of the groups (observers._id_floor(),
--      15_id_floor.sql) can be pending, so the check reads the id index from there: a partition
--      wholly below the floor is passed without reading it. A feed that is behind every group
--      lowers the floor to 0 (its floor is not computed: correct, slower);
--   3. deletes rows from the DEFAULT partition under the same two conditions. Rows only land
--      there when maintain() did not run for a week; this is the only DELETE on the outbox.
-- A partition whose range already has rows in the DEFAULT partition cannot be created; it is
-- skipped and reported, never an error.
-- Creating or dropping a partition takes an ACCESS EXCLUSIVE lock on observers.event: while
-- maintain() waits for it (behind every transaction that captured events and is still open),
-- every capturing writer queues behind maintain(). So it waits at most 50ms (lock_timeout);
-- what could not be locked is skipped, reported and retried by the next call (partitions are
-- created a week ahead, so there are plenty of next calls).
-- Partitions are members of the extension (pg_dump skips the outbox, DROP EXTENSION drops it).

CREATE FUNCTION observers._partition_name(p_day date)
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$ SELECT 'event_p' || to_char(p_day, 'YYYYMMDD') $$;

CREATE FUNCTION observers._is_extension_member(p_rel regclass)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_depend
                    WHERE classid = 'pg_class'::regclass AND objid = p_rel
                      AND refclassid = 'pg_extension'::regclass AND deptype = 'e')
$$;

CREATE FUNCTION observers.maintain()
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '50ms'
AS $$
DECLARE
    v_retention  interval;
    v_today      date := (now() AT TIME ZONE 'UTC')::date;
    v_cutoff     timestamptz;
    v_day        date;
    v_name       text;
    v_rel        regclass;
    v_lo         text;
    v_hi         text;
    v_all_groups boolean;
    v_min_xmin   xid8;
    v_feed_xmin  xid8;
    v_min_floor  bigint;
    v_pending    boolean;
    v_deleted    bigint := 0;
    v_created    text[] := '{}';
    v_dropped    text[] := '{}';
    v_kept       text[] := '{}';
    v_skipped    text[] := '{}';
    v_dedup      text;
    r            record;
BEGIN
    BEGIN
        v_retention := observers._retention_setting()::interval;
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('observers.retention = %L is not a valid interval', observers._retention_setting()),
            HINT = 'Set it to an interval such as ''7 days''.';
    END;
    IF v_retention <= interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('observers.retention must be positive, got %s', v_retention);
    END IF;
    v_cutoff := now() - v_retention;

    -- serialize concurrent maintain() calls without blocking writers
    BEGIN
        LOCK TABLE observers.event IN SHARE UPDATE EXCLUSIVE MODE;
    EXCEPTION WHEN lock_not_available THEN
        RETURN 'nothing done: another maintain() is running';
    END;

    -- 1. partitions ahead
    FOR i IN 0..7 LOOP
        v_day := v_today + i;
        v_name := observers._partition_name(v_day);
        CONTINUE WHEN to_regclass('observers.' || v_name) IS NOT NULL;
        v_lo := to_char(v_day, 'YYYY-MM-DD') || ' 00:00:00+00';
        v_hi := to_char(v_day + 1, 'YYYY-MM-DD') || ' 00:00:00+00';
        IF EXISTS (SELECT 1 FROM observers.event_default
                    WHERE captured_at >= v_lo::timestamptz AND captured_at < v_hi::timestamptz) THEN
            v_skipped := v_skipped || (v_name || ' (its day has rows in event_default)');
            CONTINUE;
        END IF;
        BEGIN
            EXECUTE format('CREATE TABLE observers.%I PARTITION OF observers.event FOR VALUES FROM (%L) TO (%L)',
                           v_name, v_lo, v_hi);
            v_rel := ('observers.' || v_name)::regclass;
            IF NOT observers._is_extension_member(v_rel) THEN
                EXECUTE format('ALTER EXTENSION pg_observers ADD TABLE %s', v_rel);
            END IF;
            EXECUTE format('GRANT SELECT ON %s TO observers_admin', v_rel);
            v_created := v_created || v_name;
        EXCEPTION
            WHEN lock_not_available THEN
                v_skipped := v_skipped || (v_name || ' (outbox busy, lock timeout)');
            WHEN check_violation THEN
                v_skipped := v_skipped || (v_name || ' (its day has rows in event_default)');
        END;
    END LOOP;

    -- 2. what every group has passed
    SELECT coalesce(bool_and(k.group_name IS NOT NULL), true),
           min(pg_snapshot_xmin(k.snap_lo)),
           coalesce(min(observers._id_floor(k)), 0)
      INTO v_all_groups, v_min_xmin, v_min_floor
      FROM (SELECT DISTINCT o.group_name FROM observers.observer AS o) AS g
      LEFT JOIN observers.checkpoint AS k ON k.group_name = g.group_name;
    -- and what every feed (search index, Elasticsearch sink: 52_search.sql) has passed
    v_feed_xmin := observers._feeds_min_xmin();
    IF v_feed_xmin IS NOT NULL AND (v_min_xmin IS NULL OR v_feed_xmin < v_min_xmin) THEN
        v_min_xmin := v_feed_xmin;
        v_min_floor := 0;    -- the groups' id floor says nothing about a feed behind them
    END IF;

    FOR r IN
        SELECT c.oid::regclass AS rel, c.relname,
               (to_date(substr(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' AS upper_bound
          FROM pg_inherits AS i
          JOIN pg_class AS c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'observers.event'::regclass
           AND c.relname ~ '^event_p[0-9]{8}$'
         ORDER BY c.relname
    LOOP
        CONTINUE WHEN r.upper_bound >= v_cutoff;
        IF NOT v_all_groups THEN
            v_kept := v_kept || r.relname::text;
            CONTINUE;
        END IF;
        IF v_min_xmin IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE id > $2 AND txid >= $1)', r.rel)
               INTO v_pending USING v_min_xmin, v_min_floor;
            IF v_pending THEN
                v_kept := v_kept || r.relname::text;
                CONTINUE;
            END IF;
        END IF;
        BEGIN
            IF observers._is_extension_member(r.rel) THEN
                EXECUTE format('ALTER EXTENSION pg_observers DROP TABLE %s', r.rel);
            END IF;
            EXECUTE format('DROP TABLE %s', r.rel);
            v_dropped := v_dropped || r.relname::text;
        EXCEPTION WHEN lock_not_available THEN
            v_skipped := v_skipped || (r.relname || ' (outbox busy, lock timeout)');
        END;
    END LOOP;

    -- 3. the DEFAULT partition (abnormal path: maintain() did not run for a week)
    IF v_all_groups THEN
        DELETE FROM observers.event_default
         WHERE captured_at < v_cutoff
           AND (v_min_xmin IS NULL OR txid < v_min_xmin);
        GET DIAGNOSTICS v_deleted = ROW_COUNT;
    END IF;

    -- 4. deduplication state (35_dedup.sql)
    v_dedup := observers._maintain_dedup() || '; ' || observers._maintain_attempts(v_cutoff);

    RETURN format('created %s%s; dropped %s%s; kept %s%s; skipped %s%s; deleted %s old rows from event_default; %s',
                  cardinality(v_created),
                  CASE WHEN v_created <> '{}' THEN ' (' || array_to_string(v_created, ', ') || ')' ELSE '' END,
                  cardinality(v_dropped),
                  CASE WHEN v_dropped <> '{}' THEN ' (' || array_to_string(v_dropped, ', ') || ')' ELSE '' END,
                  cardinality(v_kept),
                  CASE WHEN v_kept <> '{}' THEN ' (' || array_to_string(v_kept, ', ') || ': not yet delivered)' ELSE '' END,
                  cardinality(v_skipped),
                  CASE WHEN v_skipped <> '{}' THEN ' (' || array_to_string(v_skipped, ', ') || ')' ELSE '' END,
                  v_deleted, v_dedup);
END
$$;

-- The initial partitions (today .. today + 7).
SELECT observers.maintain();
