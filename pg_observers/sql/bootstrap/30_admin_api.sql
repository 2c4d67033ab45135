-- pg_observers: the admin API (create/drop/enable/disable observers, status)
--
-- Parse -> validate -> build: every input is checked (with an error that says what to fix)
-- before anything is written; then the registry row and the capture triggers are written in
-- the same transaction. Registry changes are serialized by an EXCLUSIVE lock on
-- observers.observer (reads are not blocked).

-- Validation helpers -------------------------------------------------------------------------

-- schema.table, unquoted, for messages and payloads; the OID if the table is gone.
CREATE FUNCTION observers._table_label(p_table regclass)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT n.nspname || '.' || c.relname
                       FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                      WHERE c.oid = p_table),
                    p_table::oid::text)
$$;

CREATE FUNCTION observers._check_name(p_name text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_name IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'observer name must not be NULL';
    END IF;
    IF p_name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid observer name "%s"', p_name),
            HINT = 'Use 1 to 63 lowercase letters, digits and underscores, starting with a letter (^[a-z][a-z0-9_]{0,62}$).';
    END IF;
END
$$;

CREATE FUNCTION observers._check_group(p_group text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_group IS NULL OR p_group !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('invalid group name %s', coalesce('"' || p_group || '"', 'NULL')),
            HINT = 'Use 1 to 63 letters, digits and _ . : - starting with a letter or digit.';
    END IF;
END
$$;

-- The table an observer may watch: an ordinary or partitioned table, not temporary, not a
-- system table, readable by the calling role (an observer publishes every column).
CREATE FUNCTION observers._check_table(p_table regclass)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    IF p_table IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'table_name must not be NULL';
    END IF;
    SELECT c.relkind, c.relpersistence, n.nspname, c.relrowsecurity, c.relforcerowsecurity,
           c.relowner INTO r
      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = p_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = format('table with OID %s does not exist', p_table::oid);
    END IF;
    IF r.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION USING ERRCODE = 'wrong_object_type',
            MESSAGE = format('%s is %s; observers can only watch tables',
                             observers._table_label(p_table),
                             CASE r.relkind WHEN 'v' THEN 'a view'
                                            WHEN 'm' THEN 'a materialized view'
                                            WHEN 'f' THEN 'a foreign table'
                                            WHEN 'S' THEN 'a sequence'
                                            WHEN 'i' THEN 'an index'
                                            WHEN 'I' THEN 'an index'
                                            WHEN 'c' THEN 'a composite type'
                                            ELSE 'not a table' END);
    END IF;
    IF r.nspname IN ('observers', 'pg_catalog', 'information_schema')
       OR r.nspname LIKE 'pg\_toast%' THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('cannot observe %s: it is a system or pg_observers table',
                             observers._table_label(p_table));
    END IF;
    IF r.relpersistence = 't' THEN
        RAISE EXCEPTION USING ERRCODE = 'wrong_object_type',
            MESSAGE = format('cannot observe temporary table %s',
                             (SELECT relname FROM pg_class WHERE oid = p_table));
    END IF;
    IF NOT has_table_privilege(observers._calling_role(), p_table, 'SELECT') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: role %s cannot read table %s',
                             observers._calling_role()::regrole, observers._table_label(p_table)),
            HINT = 'An observer publishes every column of the rows it captures, so the role creating it must have SELECT on the table.';
    END IF;
    -- Row-level security: an observer publishes every row, whatever the policies say, so only a
    -- role that sees every row anyway may observe the table (docs/SECURITY.md).
    IF r.relrowsecurity AND NOT observers._bypasses_rls(observers._calling_role(), p_table) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied: table %s has row-level security and role %s does not bypass it',
                             observers._table_label(p_table), observers._calling_role()::regrole),
            HINT = 'An observer publishes every row it captures, whatever the policies allow its creator to see. Create it as the table''s owner (without FORCE ROW LEVEL SECURITY), a role with BYPASSRLS, or a superuser.';
    END IF;
END
$$;

-- Whether p_role sees every row of p_table whatever its row-level security policies say: a
-- superuser, a role with BYPASSRLS, or the table's owner (or a member of the owning role) when
-- the table does not FORCE ROW LEVEL SECURITY. PostgreSQL's own rule (check_enable_rls).
CREATE FUNCTION observers._bypasses_rls(p_role oid, p_table regclass)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles AS r WHERE r.oid = p_role), false)
        OR coalesce((SELECT NOT c.relforcerowsecurity AND pg_has_role(p_role, c.relowner, 'USAGE')
                       FROM pg_class AS c WHERE c.oid = p_table), false)
$$;

-- Normalized events: upper case, no duplicates, in the order INSERT, UPDATE, DELETE.
CREATE FUNCTION observers._check_events(p_events text[])
RETURNS text[]
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_event text;
    v_norm  text[] := '{}';
BEGIN
    IF p_events IS NULL OR cardinality(p_events) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'events must name at least one of INSERT, UPDATE, DELETE';
    END IF;
    FOREACH v_event IN ARRAY p_events LOOP
        IF upper(btrim(v_event)) = 'TRUNCATE' THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('unknown event "%s": events are INSERT, UPDATE and DELETE', v_event),
                HINT = 'TRUNCATE is not captured: it removes rows without row events.';
        END IF;
        IF v_event IS NULL OR upper(btrim(v_event)) NOT IN ('INSERT', 'UPDATE', 'DELETE') THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('unknown event %s: events are INSERT, UPDATE and DELETE',
                                 coalesce('"' || v_event || '"', 'NULL'));
        END IF;
        v_norm := v_norm || upper(btrim(v_event));
    END LOOP;
    RETURN ARRAY(SELECT e FROM unnest('{INSERT,UPDATE,DELETE}'::text[]) WITH ORDINALITY AS x(e, i)
                  WHERE e = ANY (v_norm) ORDER BY i);
END
$$;

-- Column lists (columns, ordering_key): every name must be a column of the table. Returns the
-- list without duplicates, NULL for NULL or empty.
CREATE FUNCTION observers._check_columns(p_table regclass, p_columns text[], p_what text)
RETURNS text[]
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_col text;
    v_out text[] := '{}';
BEGIN
    IF p_columns IS NULL OR cardinality(p_columns) = 0 THEN
        RETURN NULL;
    END IF;
    FOREACH v_col IN ARRAY p_columns LOOP
        IF v_col IS NULL OR NOT EXISTS (
               SELECT 1 FROM pg_attribute
                WHERE attrelid = p_table AND attname = v_col AND attnum > 0 AND NOT attisdropped)
        THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_column',
                MESSAGE = format('column %s of table %s does not exist (in %s)',
                                 coalesce('"' || v_col || '"', 'NULL'),
                                 observers._table_label(p_table), p_what),
                HINT = format('Columns of %s: %s.', observers._table_label(p_table),
                              (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                                 FROM pg_attribute
                                WHERE attrelid = p_table AND attnum > 0 AND NOT attisdropped));
        END IF;
        IF NOT v_col = ANY (v_out) THEN
            v_out := v_out || v_col;
        END IF;
    END LOOP;
    RETURN v_out;
END
$$;

-- actions must be a JSON array of objects, each with a string "type" the worker can run. Stored
-- as given (${VAR} placeholders included: the worker expands them; secrets are never stored).
-- The type lists are the worker's (observer-worker/src/config/actions.rs AVAILABLE_ACTION_TYPES
-- plus the internal cache_evict, and LATER_ACTION_TYPES; a unit test there keeps them equal):
-- an observer whose action type the worker does not know would only be found broken at delivery.
CREATE FUNCTION observers._check_actions(p_actions jsonb)
RETURNS jsonb
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_action jsonb;
    v_index  int := 0;
    v_type   text;
    v_known  CONSTANT text[] := ARRAY['webhook', 'slack', 'email', 'cache_evict'];
    v_later  CONSTANT text[] := ARRAY['search', 'elasticsearch', 'job'];
    v_hint   CONSTANT text := 'Known action types: webhook, slack, email (cache_evict is internal: '
                              'the worker''s lookup eviction). Coming in a later version: '
                              'search, elasticsearch, job.';
BEGIN
    IF p_actions IS NULL THEN
        RETURN '[]'::jsonb;
    END IF;
    IF jsonb_typeof(p_actions) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('actions must be a JSON array of objects with a "type" key, got %s',
                             jsonb_typeof(p_actions));
    END IF;
    FOR v_action IN SELECT value FROM jsonb_array_elements(p_actions) LOOP
        IF jsonb_typeof(v_action) <> 'object' THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('action %s must be a JSON object with a "type" key, got %s',
                                 v_index, jsonb_typeof(v_action));
        END IF;
        IF jsonb_typeof(v_action -> 'type') IS DISTINCT FROM 'string'
           OR btrim(v_action ->> 'type') = '' THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('action %s has no "type" (a non-empty string such as "webhook")',
                                 v_index);
        END IF;
        v_type := btrim(v_action ->> 'type');
        IF v_type = ANY (v_later) THEN
            RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
                MESSAGE = format('action %s: action type "%s" is not available in this version yet',
                                 v_index, v_type),
                HINT = v_hint;
        ELSIF NOT v_type = ANY (v_known) THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('action %s: unknown action type "%s"', v_index, v_type),
                HINT = v_hint;
        END IF;
        v_index := v_index + 1;
    END LOOP;
    RETURN p_actions;
END
$$;

-- Compile the condition for each captured operation, exactly where the capture trigger
-- evaluates it and with the rights of observers_capture (observers._probe_condition), and
-- turn compilation errors into messages that say what to fix.
CREATE FUNCTION observers._check_condition(p_table regclass, p_condition text, p_events text[])
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cond   text := nullif(btrim(p_condition), '');
    v_op     text;
    v_state  text;
    v_msg    text;
    v_detail text;
    v_hint   text;
    v_both   boolean;
BEGIN
    IF v_cond IS NULL THEN
        RETURN NULL;
    END IF;
    FOREACH v_op IN ARRAY p_events LOOP
        v_state := NULL;
        BEGIN
            PERFORM observers._probe_condition(p_table::oid, v_cond, v_op);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT,
                                    v_detail = PG_EXCEPTION_DETAIL, v_hint = PG_EXCEPTION_HINT;
        END;
        CONTINUE WHEN v_state IS NULL;

        -- "missing FROM-clause entry for table new/old": does it compile with both rows?
        IF v_state = '42P01' AND v_op <> 'UPDATE' THEN
            v_both := true;
            BEGIN
                PERFORM observers._probe_condition(p_table::oid, v_cond, 'UPDATE');
            EXCEPTION WHEN OTHERS THEN
                v_both := false;
            END;
            IF v_both AND v_op = 'DELETE' THEN
                RAISE EXCEPTION USING ERRCODE = 'undefined_table',
                    MESSAGE = 'condition references NEW, which DELETE events do not have; use OLD or put DELETE in a separate observer';
            ELSIF v_both THEN
                RAISE EXCEPTION USING ERRCODE = 'undefined_table',
                    MESSAGE = 'condition references OLD, which INSERT events do not have; use NEW or put INSERT in a separate observer';
            END IF;
        END IF;

        v_msg := format('invalid condition for %s events on %s: %s', v_op,
                        observers._table_label(p_table), v_msg);
        v_hint := coalesce(nullif(v_hint, '') || ' ', '') || CASE
            WHEN v_state = '42501' THEN
                'Conditions run as role observers_capture, which holds no rights on your objects: a condition may only use what PUBLIC may use. Never grant observers_capture anything: every observer creator would get it too.'
            ELSE
                'A condition is one SQL boolean expression over NEW and/or OLD, e.g. NEW.total > 1000. Names are resolved with search_path = pg_catalog: schema-qualify your own functions and tables.'
            END;
        IF coalesce(v_detail, '') = '' THEN
            RAISE EXCEPTION USING ERRCODE = v_state, MESSAGE = v_msg, HINT = v_hint;
        END IF;
        RAISE EXCEPTION USING ERRCODE = v_state, MESSAGE = v_msg, DETAIL = v_detail, HINT = v_hint;
    END LOOP;
    RETURN v_cond;
END
$$;

-- Triggers -----------------------------------------------------------------------------------

-- Trigger names: observers_<id>_insert / _update / _delete.
CREATE FUNCTION observers._trigger_name(p_id int, p_op text)
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$ SELECT 'observers_' || p_id || '_' || lower(p_op) $$;

-- The WHEN clause of the UPDATE trigger for a `columns` filter: fire only when one of the
-- columns changed. Types whose equality is identity compare with IS DISTINCT FROM, others by
-- text representation (the same rule capture uses to compute `changed`).
CREATE FUNCTION observers._columns_changed_sql(p_table regclass, p_columns text[])
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(
               CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype,
                                        'bool'::regtype, 'text'::regtype, 'varchar'::regtype,
                                        'uuid'::regtype, 'date'::regtype, 'timestamp'::regtype,
                                        'timestamptz'::regtype, 'oid'::regtype, 'char'::regtype,
                                        'name'::regtype)
                    THEN format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', a.attname)
                    ELSE format('OLD.%1$I::text IS DISTINCT FROM NEW.%1$I::text', a.attname)
               END, ' OR ' ORDER BY c.ord)
      FROM unnest(p_columns) WITH ORDINALITY AS c(col, ord)
      JOIN pg_attribute AS a ON a.attrelid = p_table AND a.attname = c.col
$$;

-- The relations an observer's triggers sit on: the observed table and, for a table with
-- inheritance children, every descendant (row triggers fire on the relation that holds the row,
-- so an UPDATE through the parent of a child's row fires only the child's triggers). Partitions
-- are not listed: a partitioned table's row triggers are cloned to its partitions by PostgreSQL.
CREATE FUNCTION observers._observed_relations(p_table regclass)
RETURNS SETOF regclass
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE tree(rel) AS (
        SELECT c.oid FROM pg_class AS c WHERE c.oid = p_table
        UNION
        SELECT i.inhrelid
          FROM tree AS t
          JOIN pg_class AS pc ON pc.oid = t.rel AND pc.relkind = 'r'
          JOIN pg_inherits AS i ON i.inhparent = t.rel
    )
    SELECT rel::regclass FROM tree
$$;

-- Install the capture triggers of an observer (one per captured operation and relation);
-- triggers that already exist are left alone, so this also repairs a partial set.
--
-- Plain tables without parent or children capture INSERT and DELETE per statement through a
-- transition table. Partitioned tables, partitions and inheritance hierarchies capture per row:
-- a statement-level trigger would not see rows written through another table of the hierarchy,
-- and the observer covers every table of the hierarchy, wherever a statement is addressed.
CREATE FUNCTION observers._install_triggers(o observers.observer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_statement boolean;
    v_op        text;
    v_name      text;
    v_rel       regclass;
    -- the observer id only: the capture function reads the name and condition from the
    -- registry once per backend (every trigger argument is copied for every statement)
    v_args      text := format('%L', o.id::text);
    v_when      text;
BEGIN
    SELECT c.relkind = 'r' AND NOT c.relispartition
           AND NOT EXISTS (SELECT 1 FROM pg_inherits AS i
                            WHERE i.inhrelid = c.oid OR i.inhparent = c.oid)
      INTO v_statement
      FROM pg_class AS c WHERE c.oid = o.table_name;

    FOR v_rel IN SELECT * FROM observers._observed_relations(o.table_name) LOOP
        FOREACH v_op IN ARRAY o.events LOOP
            v_name := observers._trigger_name(o.id, v_op);
            CONTINUE WHEN EXISTS (SELECT 1 FROM pg_trigger AS t
                                   WHERE t.tgrelid = v_rel AND t.tgname = v_name);
            IF v_op = 'UPDATE' THEN
                v_when := CASE WHEN o.columns IS NOT NULL
                               THEN format(' WHEN (%s)', observers._columns_changed_sql(o.table_name, o.columns))
                               ELSE '' END;
                EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s FOR EACH ROW%s EXECUTE FUNCTION observers.capture(%s)',
                               v_name, v_rel, v_when, v_args);
            ELSIF v_statement THEN
                EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s TABLE AS %I FOR EACH STATEMENT EXECUTE FUNCTION observers.capture(%s)',
                               v_name, v_op, v_rel,
                               CASE v_op WHEN 'INSERT' THEN 'NEW' ELSE 'OLD' END,
                               CASE v_op WHEN 'INSERT' THEN 'observers_new_rows' ELSE 'observers_old_rows' END,
                               v_args);
            ELSE
                EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION observers.capture(%s)',
                               v_name, v_op, v_rel, v_args);
            END IF;
            IF NOT o.enabled THEN
                EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', v_rel, v_name);
            END IF;
        END LOOP;
    END LOOP;
END
$$;

-- The capture triggers an observer installed (none if its table is gone).
CREATE FUNCTION observers._capture_triggers(o observers.observer)
RETURNS TABLE (tgname name, rel regclass)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.tgname, t.tgrelid::regclass
      FROM pg_trigger AS t
     WHERE t.tgrelid IN (SELECT * FROM observers._observed_relations(o.table_name))
       AND t.tgparentid = 0
       AND t.tgfoid = 'observers.capture()'::regprocedure
       AND t.tgname IN (observers._trigger_name(o.id, 'INSERT'),
                        observers._trigger_name(o.id, 'UPDATE'),
                        observers._trigger_name(o.id, 'DELETE'))
$$;

-- Remove the capture triggers of an observer (nothing to do if its table is gone).
CREATE FUNCTION observers._remove_triggers(o observers.observer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM observers._capture_triggers(o)
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
    END LOOP;
END
$$;

CREATE FUNCTION observers._set_triggers_enabled(o observers.observer, p_enabled boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM observers._capture_triggers(o)
    LOOP
        EXECUTE format('ALTER TABLE %s %s TRIGGER %I', r.rel,
                       CASE WHEN p_enabled THEN 'ENABLE' ELSE 'DISABLE' END, r.tgname);
    END LOOP;
END
$$;

CREATE FUNCTION observers._find_observer(p_name text)
RETURNS observers.observer
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o observers.observer;
BEGIN
    SELECT * INTO o FROM observers.observer WHERE name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = format('observer %s does not exist', coalesce('"' || p_name || '"', 'NULL')),
            HINT = 'SELECT name FROM observers.observer lists the observers.';
    END IF;
    RETURN o;
END
$$;

-- The admin API ------------------------------------------------------------------------------

CREATE FUNCTION observers.create_observer(
    name         text,
    table_name   regclass,
    events       text[]  DEFAULT '{INSERT,UPDATE,DELETE}',
    condition    text    DEFAULT NULL,
    columns      text[]  DEFAULT NULL,
    ordering_key text[]  DEFAULT NULL,
    actions      jsonb   DEFAULT '[]',
    group_name   text    DEFAULT 'default',
    replace      boolean DEFAULT false)
RETURNS observers.observer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_name      text := create_observer.name;
    v_table     regclass := create_observer.table_name;
    v_group     text := create_observer.group_name;
    v_events    text[];
    v_columns   text[];
    v_key       text[];
    v_actions   jsonb;
    v_condition text;
    v_old       observers.observer;
    v_new       observers.observer;
BEGIN
    -- validate (no writes yet)
    PERFORM observers._check_name(v_name);
    PERFORM observers._check_table(v_table);
    v_events := observers._check_events(create_observer.events);
    v_columns := observers._check_columns(v_table, create_observer.columns, 'columns');
    IF v_columns IS NOT NULL AND NOT 'UPDATE' = ANY (v_events) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('columns only filter UPDATE events, and observer "%s" does not capture UPDATE', v_name),
            HINT = 'Add UPDATE to events or leave columns NULL.';
    END IF;
    v_key := observers._check_columns(v_table, create_observer.ordering_key, 'ordering_key');
    v_actions := observers._check_actions(create_observer.actions);
    PERFORM observers._check_group(v_group);
    v_condition := observers._check_condition(v_table, create_observer.condition, v_events);

    -- build
    LOCK TABLE observers.observer IN EXCLUSIVE MODE;
    SELECT * INTO v_old FROM observers.observer AS o WHERE o.name = v_name;
    IF FOUND THEN
        IF NOT coalesce(create_observer.replace, false) THEN
            RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
                MESSAGE = format('observer "%s" already exists', v_name),
                HINT = 'Pass replace => true to update its definition, or drop it first.';
        END IF;
        IF v_old.table_name = v_table
           AND v_old.events = v_events
           AND v_old.condition IS NOT DISTINCT FROM v_condition
           AND v_old.columns IS NOT DISTINCT FROM v_columns
           AND v_old.ordering_key IS NOT DISTINCT FROM v_key
           AND v_old.actions = v_actions
           AND v_old.group_name = v_group THEN
            RETURN v_old;                           -- same definition: nothing to do
        END IF;
        UPDATE observers.observer AS o
           SET table_name = v_table, events = v_events, condition = v_condition,
               columns = v_columns, ordering_key = v_key, actions = v_actions,
               group_name = v_group, updated_at = now(),
               created_by = observers._calling_role()::regrole::text
         WHERE o.id = v_old.id
        RETURNING * INTO v_new;
        IF v_old.table_name <> v_table OR v_old.events <> v_events
           OR v_old.condition IS DISTINCT FROM v_condition
           OR v_old.columns IS DISTINCT FROM v_columns THEN
            PERFORM observers._remove_triggers(v_old);
            PERFORM observers._install_triggers(v_new);
        END IF;
        RETURN v_new;
    END IF;

    INSERT INTO observers.observer (name, group_name, table_name, events, condition, columns,
                                    ordering_key, actions, created_by)
    VALUES (v_name, v_group, v_table, v_events, v_condition, v_columns, v_key, v_actions,
            observers._calling_role()::regrole::text)
    RETURNING * INTO v_new;
    PERFORM observers._install_triggers(v_new);
    RETURN v_new;
END
$$;

-- Drop an observer and its triggers. Its undelivered events are no longer delivered (the
-- outbox rows stay until their partition is dropped); its dead letters stay.
CREATE FUNCTION observers.drop_observer(name text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    o observers.observer;
BEGIN
    LOCK TABLE observers.observer IN EXCLUSIVE MODE;
    SELECT * INTO o FROM observers.observer AS x WHERE x.name = drop_observer.name;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM observers._remove_triggers(o);
    DELETE FROM observers.observer AS x WHERE x.id = o.id;
    RETURN true;
END
$$;

-- Stop / resume capturing. Returns false when the observer already was in that state.
-- Events captured while it was enabled are still delivered. enable_observer() also puts back
-- capture triggers that schema changes removed, disabled or renamed (observers._repair_capture,
-- 32_integrity.sql), even when the observer was enabled already; each change is a NOTICE.
CREATE FUNCTION observers.disable_observer(name text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    o observers.observer;
BEGIN
    LOCK TABLE observers.observer IN EXCLUSIVE MODE;
    o := observers._find_observer(disable_observer.name);
    IF NOT o.enabled THEN
        RETURN false;
    END IF;
    PERFORM observers._set_triggers_enabled(o, false);
    UPDATE observers.observer AS x SET enabled = false, updated_at = now() WHERE x.id = o.id;
    RETURN true;
END
$$;

CREATE FUNCTION observers.enable_observer(name text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    o          observers.observer;
    v_was      boolean;
    v_repaired text;
BEGIN
    LOCK TABLE observers.observer IN EXCLUSIVE MODE;
    o := observers._find_observer(enable_observer.name);
    v_was := o.enabled;
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = o.table_name) THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = format('the table of observer "%s" no longer exists', o.name),
            HINT = 'Drop the observer, or re-create it on an existing table with replace => true.';
    END IF;
    IF NOT v_was THEN
        PERFORM observers._set_triggers_enabled(o, true);
        o.enabled := true;
    END IF;
    FOR v_repaired IN SELECT * FROM observers._repair_capture(o) LOOP
        RAISE NOTICE 'observer "%": %', o.name, v_repaired;
    END LOOP;
    IF v_was THEN
        RETURN false;
    END IF;
    UPDATE observers.observer AS x SET enabled = true, updated_at = now() WHERE x.id = o.id;
    RETURN true;
END
$$;
