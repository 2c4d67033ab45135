-- pg_observers: capture integrity. See docs/SQL.md ("When capture breaks").
--
-- An observer captures through triggers on its table (30_admin_api.sql, _install_triggers). Schema
-- changes can remove or switch off those triggers without an error:
--   * ALTER TABLE ... DROP COLUMN ... CASCADE of a column in the observer's `columns` drops the
--     UPDATE trigger (its WHEN clause depends on the column), with only a NOTICE;
--   * the table's owner may DROP TRIGGER, ALTER TABLE ... DISABLE TRIGGER (on the table or on one
--     partition) or ALTER TRIGGER ... RENAME;
--   * DROP TABLE leaves the observer with nothing to watch.
-- Row changes made meanwhile are never captured. Three things catch it:
--   1. observers._capture_problems(o): the observer's definition against pg_trigger, right now.
--      observers.status() shows it in column capture_error, `fraiseql-observers status` and
--      `status --check` report it as an error, and the worker exports observer_capture_broken.
--   2. Event triggers warn the session that ran the DDL, at once (they never fail the command).
--   3. observers.repair_observer(name), and enable_observer(name), put back what is missing.
-- Reading pg_trigger/pg_class/pg_inherits takes no lock on the user's table: status() never waits
-- behind a long ALTER TABLE.

-- The pg_trigger.tgtype bit of an operation.
CREATE FUNCTION observers._trigger_op_bit(p_op text)
RETURNS int
LANGUAGE sql
IMMUTABLE
AS $$ SELECT CASE p_op WHEN 'INSERT' THEN 4 WHEN 'DELETE' THEN 8 WHEN 'UPDATE' THEN 16 END $$;

-- The capture trigger of observer `o` for operation `p_op` on its table: the one named as
-- _install_triggers names it, else (renamed) one that runs observers.capture() for this observer
-- (its first argument is the observer id) on that operation. No row if there is none.
CREATE FUNCTION observers._capture_trigger(o observers.observer, p_op text)
RETURNS TABLE (oid oid, tgname name, tgenabled "char")
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.oid, t.tgname, t.tgenabled
      FROM pg_trigger AS t
     WHERE t.tgrelid = o.table_name
       AND t.tgparentid = 0
       AND t.tgfoid = 'observers.capture()'::regprocedure
       AND (t.tgtype::int & observers._trigger_op_bit(p_op)) <> 0
       AND split_part(encode(t.tgargs, 'escape'), '\000', 1) = o.id::text
     ORDER BY t.tgname = observers._trigger_name(o.id, p_op) DESC, t.tgname
     LIMIT 1
$$;

-- The partitions (at any depth) of `p_table` where the clone of capture trigger `p_trigger` is
-- disabled. Walks pg_inherits itself: pg_partition_tree() would lock every partition.
CREATE FUNCTION observers._disabled_on_partitions(p_table regclass, p_trigger name)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE parts(relid) AS (
        SELECT i.inhrelid FROM pg_inherits AS i WHERE i.inhparent = p_table
        UNION ALL
        SELECT i.inhrelid FROM pg_inherits AS i JOIN parts AS p ON i.inhparent = p.relid
    )
    SELECT string_agg(observers._table_label(t.tgrelid), ', ' ORDER BY observers._table_label(t.tgrelid))
      FROM parts AS p
      JOIN pg_trigger AS t ON t.tgrelid = p.relid
     WHERE t.tgname = p_trigger
       AND t.tgparentid <> 0
       AND t.tgfoid = 'observers.capture()'::regprocedure
       AND t.tgenabled IN ('D', 'R')
$$;

-- The capture triggers observer `o` needs on the inheritance children of its table (every
-- descendant, _observed_relations), one row per (child, operation), with the trigger's OID or
-- NULL when it is missing.
CREATE FUNCTION observers._child_capture_triggers(o observers.observer)
RETURNS TABLE (rel regclass, op text, trigger oid)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.rel, e.op,
           (SELECT x.oid FROM pg_trigger AS x
             WHERE x.tgrelid = r.rel AND x.tgname = observers._trigger_name(o.id, e.op)
               AND x.tgfoid = 'observers.capture()'::regprocedure)
      FROM observers._observed_relations(o.table_name) AS r(rel)
     CROSS JOIN unnest(o.events) AS e(op)
     WHERE r.rel <> o.table_name
$$;

-- What is wrong with the capture of observer `o` right now, one row per problem (none: it
-- captures exactly what it is defined to). kind is one of
--   table_dropped, column_missing, trigger_missing            (only a DROP causes these)
--   trigger_renamed, trigger_disabled, partition_disabled, trigger_enabled   (ALTER causes these)
--   child_missing, child_disabled       (an inheritance child attached later, or ALTER on a child)
--   rls_not_bypassed                    (row-level security enabled after the observer was made)
-- trigger_enabled: the observer is disabled but its trigger fires (it captures anyway).
CREATE FUNCTION observers._capture_problems(o observers.observer)
RETURNS TABLE (kind text, message text)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_label text;
    v_op    text;
    v_name  text;
    v_col   text;
    v_parts text;
    v_kind  "char";
    t       record;
BEGIN
    IF o.id IS NULL THEN
        RETURN;
    END IF;
    SELECT c.relkind INTO v_kind FROM pg_class AS c WHERE c.oid = o.table_name;
    IF NOT FOUND THEN
        kind := 'table_dropped';
        message := 'its table was dropped: nothing is captured';
        RETURN NEXT;
        RETURN;
    END IF;
    v_label := observers._table_label(o.table_name);
    FOREACH v_col IN ARRAY coalesce(o.columns, '{}') LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute AS a
                        WHERE a.attrelid = o.table_name AND a.attname = v_col
                          AND a.attnum > 0 AND NOT a.attisdropped) THEN
            kind := 'column_missing';
            message := format('column "%s" of its columns filter no longer exists in %s', v_col, v_label);
            RETURN NEXT;
        END IF;
    END LOOP;
    FOREACH v_op IN ARRAY o.events LOOP
        v_name := observers._trigger_name(o.id, v_op);
        SELECT * INTO t FROM observers._capture_trigger(o, v_op);
        IF t.oid IS NULL THEN
            kind := 'trigger_missing';
            message := format('%s not captured: trigger %s on %s is missing', v_op, v_name, v_label);
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF t.tgname <> v_name THEN
            kind := 'trigger_renamed';
            message := format('trigger %s on %s was renamed to %s', v_name, v_label, t.tgname);
            RETURN NEXT;
        END IF;
        IF o.enabled AND t.tgenabled IN ('D', 'R') THEN
            kind := 'trigger_disabled';
            message := format('%s not captured: trigger %s on %s is %s', v_op, t.tgname, v_label,
                              CASE t.tgenabled WHEN 'D' THEN 'disabled'
                                   ELSE 'enabled for replication only (ENABLE REPLICA TRIGGER)' END);
            RETURN NEXT;
        ELSIF NOT o.enabled AND t.tgenabled IN ('O', 'A') THEN
            kind := 'trigger_enabled';
            message := format('%s captured although the observer is disabled: trigger %s on %s is enabled',
                              v_op, t.tgname, v_label);
            RETURN NEXT;
        END IF;
        IF o.enabled AND v_kind = 'p' THEN
            v_parts := observers._disabled_on_partitions(o.table_name, t.tgname);
            IF v_parts IS NOT NULL THEN
                kind := 'partition_disabled';
                message := format('%s not captured on partition %s: trigger %s is disabled there',
                                  v_op, v_parts, t.tgname);
                RETURN NEXT;
            END IF;
        END IF;
    END LOOP;
    -- row-level security enabled (or forced) after the observer was created, for a creator that
    -- does not bypass it: the observer publishes rows its creator cannot read
    IF EXISTS (SELECT 1 FROM pg_class AS c WHERE c.oid = o.table_name AND c.relrowsecurity)
       AND NOT coalesce(observers._bypasses_rls(to_regrole(o.created_by), o.table_name), false) THEN
        kind := 'rls_not_bypassed';
        message := format('%s has row-level security that the observer''s creator %s does not bypass: it publishes rows its creator cannot read',
                          v_label, coalesce(o.created_by, '(unknown)'));
        RETURN NEXT;
    END IF;
    -- inheritance children: an observer on a table with children has its triggers on each of
    -- them (_install_triggers); a child attached later has none until the observer is repaired
    IF v_kind = 'r' THEN
        FOR t IN
            SELECT c.rel, c.op, x.tgenabled
              FROM observers._child_capture_triggers(o) AS c
              LEFT JOIN pg_trigger AS x ON x.oid = c.trigger
        LOOP
            IF t.tgenabled IS NULL THEN
                kind := 'child_missing';
                message := format('%s not captured on inheritance child %s: trigger %s is missing',
                                  t.op, observers._table_label(t.rel), observers._trigger_name(o.id, t.op));
                RETURN NEXT;
            ELSIF o.enabled AND t.tgenabled IN ('D', 'R') THEN
                kind := 'child_disabled';
                message := format('%s not captured on inheritance child %s: trigger %s is disabled there',
                                  t.op, observers._table_label(t.rel), observers._trigger_name(o.id, t.op));
                RETURN NEXT;
            END IF;
        END LOOP;
    END IF;
END
$$;

-- status()'s capture_error: the problems joined, NULL when there is none.
CREATE FUNCTION observers._capture_error(o observers.observer)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(p.message, '; ') FROM observers._capture_problems(o) AS p
$$;

-- Put back what observer `o` needs to capture as defined: re-create missing triggers (exactly as
-- _install_triggers creates them), rename renamed ones back, enable or disable them to match
-- the observer (on every partition). Returns one line per change. Refuses, saying what to do,
-- when the definition itself no longer fits the table (table dropped, a `columns` column gone).
-- The caller holds the EXCLUSIVE lock on observers.observer.
CREATE FUNCTION observers._repair_capture(o observers.observer)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_label text;
    v_op    text;
    v_name  text;
    v_col   text;
    v_one   observers.observer;
    t       record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class AS c WHERE c.oid = o.table_name) THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = format('the table of observer "%s" no longer exists', o.name),
            HINT = 'Drop the observer, or re-create it on an existing table with replace => true.';
    END IF;
    v_label := observers._table_label(o.table_name);
    FOREACH v_col IN ARRAY coalesce(o.columns, '{}') LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute AS a
                        WHERE a.attrelid = o.table_name AND a.attname = v_col
                          AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_column',
                MESSAGE = format('cannot repair observer "%s": column "%s" of its columns filter no longer exists in %s',
                                 o.name, v_col, v_label),
                HINT = 'Its UPDATE trigger fires only when one of those columns changes, so it cannot be re-created as defined. Re-create the observer with the columns that remain: observers.create_observer(..., columns => ARRAY[...], replace => true) (or columns => NULL for every UPDATE).';
        END IF;
    END LOOP;

    FOREACH v_op IN ARRAY o.events LOOP
        v_name := observers._trigger_name(o.id, v_op);
        SELECT * INTO t FROM observers._capture_trigger(o, v_op);
        IF t.oid IS NULL THEN
            IF EXISTS (SELECT 1 FROM pg_trigger AS x WHERE x.tgrelid = o.table_name AND x.tgname = v_name) THEN
                RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
                    MESSAGE = format('cannot repair observer "%s": %s has a trigger named %s that is not its capture trigger',
                                     o.name, v_label, v_name),
                    HINT = 'Rename or drop that trigger, then repair again.';
            END IF;
            v_one := o;
            v_one.events := ARRAY[v_op];
            PERFORM observers._install_triggers(v_one);
            RETURN NEXT format('re-created %s trigger %s on %s%s', v_op, v_name, v_label,
                               CASE WHEN o.enabled THEN '' ELSE ' (disabled, as the observer is)' END);
            CONTINUE;
        END IF;
        IF t.tgname <> v_name THEN
            EXECUTE format('ALTER TRIGGER %I ON %s RENAME TO %I', t.tgname, o.table_name, v_name);
            RETURN NEXT format('renamed trigger %s on %s back to %s', t.tgname, v_label, v_name);
        END IF;
        IF o.enabled AND (t.tgenabled IN ('D', 'R')
                          OR observers._disabled_on_partitions(o.table_name, v_name) IS NOT NULL) THEN
            -- on a partitioned table this recurses to every partition
            EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', o.table_name, v_name);
            RETURN NEXT format('enabled %s trigger %s on %s%s', v_op, v_name, v_label,
                               CASE WHEN t.tgenabled IN ('D', 'R') THEN '' ELSE ' and its partitions' END);
        ELSIF NOT o.enabled AND t.tgenabled IN ('O', 'A') THEN
            EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', o.table_name, v_name);
            RETURN NEXT format('disabled %s trigger %s on %s (the observer is disabled)', v_op, v_name, v_label);
        END IF;
    END LOOP;
    -- inheritance children: install what is missing (_install_triggers adds only that), and
    -- enable or disable what does not match the observer
    FOR t IN SELECT * FROM observers._child_capture_triggers(o) WHERE trigger IS NULL LOOP
        RETURN NEXT format('created %s trigger %s on inheritance child %s%s', t.op,
                           observers._trigger_name(o.id, t.op), observers._table_label(t.rel),
                           CASE WHEN o.enabled THEN '' ELSE ' (disabled, as the observer is)' END);
    END LOOP;
    PERFORM observers._install_triggers(o);
    FOR t IN
        SELECT c.rel, c.op, x.tgname
          FROM observers._child_capture_triggers(o) AS c JOIN pg_trigger AS x ON x.oid = c.trigger
         WHERE (o.enabled AND x.tgenabled IN ('D', 'R')) OR (NOT o.enabled AND x.tgenabled IN ('O', 'A'))
    LOOP
        EXECUTE format('ALTER TABLE %s %s TRIGGER %I', t.rel,
                       CASE WHEN o.enabled THEN 'ENABLE' ELSE 'DISABLE' END, t.tgname);
        RETURN NEXT format('%s %s trigger %s on inheritance child %s',
                           CASE WHEN o.enabled THEN 'enabled' ELSE 'disabled' END, t.op, t.tgname,
                           observers._table_label(t.rel));
    END LOOP;
END
$$;

-- Restore what observer `name` needs to capture as defined (see _repair_capture). One row per
-- change; no row when nothing was missing. For observers_admin.
CREATE FUNCTION observers.repair_observer(name text)
RETURNS TABLE (repaired text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    o observers.observer;
BEGIN
    LOCK TABLE observers.observer IN EXCLUSIVE MODE;
    o := observers._find_observer(repair_observer.name);
    RETURN QUERY SELECT r FROM observers._repair_capture(o) AS r;
END
$$;

-- The same under the short name the issue tracker and operators use ("repair").
CREATE FUNCTION observers.repair(name text)
RETURNS TABLE (repaired text)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT r.repaired FROM observers.repair_observer(repair.name) AS r $$;

-- Event triggers ------------------------------------------------------------------------------
--
-- They warn the session that ran a DDL command which broke an observer's capture, at once. They
-- are SECURITY DEFINER (the table owner who runs the DDL cannot read observers.observer) with a
-- pinned search_path, do nothing but read catalogs and raise a WARNING, swallow every error of
-- their own, and stay quiet while pg_observers changes triggers itself (the admin functions run
-- with pg_observers.managing_triggers = on, set below).

-- Warn about the problems of kinds `p_kinds` of the observers `p_ids`, found after `p_tag`.
CREATE FUNCTION observers._warn_capture_problems(p_ids int[], p_kinds text[], p_tag text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o      observers.observer;
    v_msgs text;
    v_hint text;
BEGIN
    FOR o IN SELECT * FROM observers.observer AS x WHERE x.id = ANY (p_ids) ORDER BY x.name LOOP
        SELECT string_agg(p.message, '; '),
               CASE WHEN bool_or(p.kind = 'rls_not_bypassed') THEN
                        format('Drop the observer (SELECT observers.drop_observer(%L)), or re-create it as a role that bypasses row-level security for the table (its owner without FORCE, BYPASSRLS, or a superuser) with create_observer(..., replace => true).', o.name)
                    WHEN bool_or(p.kind = 'column_missing') THEN
                        'Re-create the observer with the columns that remain (observers.create_observer(..., replace => true)); its UPDATE events are not captured until then.'
                    WHEN bool_or(p.kind IN ('trigger_missing', 'trigger_disabled', 'partition_disabled')) THEN
                        format('Row changes are not captured until you run SELECT * FROM observers.repair_observer(%L); observers.status() reports it meanwhile.', o.name)
                    ELSE
                        format('SELECT * FROM observers.repair_observer(%L) puts its triggers back in line with its definition; observers.status() reports it meanwhile.', o.name)
               END
          INTO v_msgs, v_hint
          FROM observers._capture_problems(o) AS p
         WHERE p.kind = ANY (p_kinds);
        IF v_msgs IS NOT NULL THEN
            RAISE WARNING USING
                MESSAGE = format('pg_observers: observer "%s" does not capture as defined (checked after %s): %s',
                                 o.name, p_tag, v_msgs),
                HINT = v_hint;
        END IF;
    END LOOP;
END
$$;

-- The relation and the tables it is a partition or inheritance child of (any depth).
CREATE FUNCTION observers._self_and_ancestors(p_rel oid)
RETURNS TABLE (relid oid)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE up(relid) AS (
        SELECT p_rel
        UNION
        SELECT i.inhparent FROM pg_inherits AS i JOIN up AS u ON i.inhrelid = u.relid
    )
    SELECT relid FROM up
$$;

-- sql_drop: a capture trigger or a column of an observed table was dropped. Dropping the table
-- itself (its triggers go with it) is not warned about: that is how a table is retired, and
-- status() reports the observer left without a table until it is dropped too.
CREATE FUNCTION observers._on_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids int[];
BEGIN
    IF current_setting('pg_observers.managing_triggers', true) = 'on' THEN
        RETURN;
    END IF;
    BEGIN
        SELECT array_agg(DISTINCT o.id) INTO v_ids
          FROM pg_event_trigger_dropped_objects() AS d
          JOIN observers.observer AS o
            ON (d.object_type = 'trigger'
                AND d.address_names[3] IN (observers._trigger_name(o.id, 'INSERT'),
                                           observers._trigger_name(o.id, 'UPDATE'),
                                           observers._trigger_name(o.id, 'DELETE')))
            OR (d.object_type = 'table column' AND d.objid = o.table_name::oid);
        IF v_ids IS NOT NULL THEN
            PERFORM observers._warn_capture_problems(
                v_ids, '{column_missing,trigger_missing}', tg_tag);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        NULL;  -- never fail the user's command; observers.status() still sees the problem
    END;
END
$$;

-- ddl_command_end of ALTER TABLE / ALTER TRIGGER: a capture trigger was disabled (on the table or
-- on a partition), enabled while its observer is disabled, or renamed.
CREATE FUNCTION observers._on_alter()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids int[];
BEGIN
    IF current_setting('pg_observers.managing_triggers', true) = 'on' THEN
        RETURN;
    END IF;
    BEGIN
        SELECT array_agg(DISTINCT o.id) INTO v_ids
          FROM pg_event_trigger_ddl_commands() AS c
          CROSS JOIN LATERAL observers._self_and_ancestors(
              CASE WHEN c.classid = 'pg_trigger'::regclass
                   THEN (SELECT t.tgrelid FROM pg_trigger AS t WHERE t.oid = c.objid)
                   ELSE c.objid END) AS a
          JOIN observers.observer AS o ON o.table_name::oid = a.relid
         WHERE c.classid IN ('pg_class'::regclass, 'pg_trigger'::regclass);
        IF v_ids IS NOT NULL THEN
            PERFORM observers._warn_capture_problems(
                v_ids, '{trigger_renamed,trigger_disabled,partition_disabled,trigger_enabled,rls_not_bypassed}', tg_tag);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        NULL;  -- never fail the user's command; observers.status() still sees the problem
    END;
END
$$;

CREATE EVENT TRIGGER pg_observers_sql_drop ON sql_drop
    EXECUTE FUNCTION observers._on_sql_drop();
CREATE EVENT TRIGGER pg_observers_alter ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER TRIGGER')
    EXECUTE FUNCTION observers._on_alter();

-- pg_observers changes capture triggers itself in these functions: no warnings from the event
-- triggers meanwhile (a function's SET is undone when it returns).
ALTER FUNCTION observers.create_observer(text, regclass, text[], text, text[], text[], jsonb, text, boolean)
    SET pg_observers.managing_triggers = 'on';
ALTER FUNCTION observers.drop_observer(text) SET pg_observers.managing_triggers = 'on';
ALTER FUNCTION observers.enable_observer(text) SET pg_observers.managing_triggers = 'on';
ALTER FUNCTION observers.disable_observer(text) SET pg_observers.managing_triggers = 'on';
ALTER FUNCTION observers.repair_observer(text) SET pg_observers.managing_triggers = 'on';
