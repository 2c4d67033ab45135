-- pg_observers: names at capture time
--
-- An event's `table` and ordering key are built when it is delivered, from the observer's table
-- and ordering-key columns. After `ALTER TABLE ... RENAME`, `SET SCHEMA`, `ALTER SCHEMA ...
-- RENAME`, `DROP TABLE` or a renamed ordering-key column, the events captured before would carry
-- the new name, the table's OID, or an ordering key of nulls (every event in one lane). So two
-- event triggers keep the names the events were captured under:
--
--   ddl_command_start   remember every observer's table label and key/columns names (by attnum)
--                       in a transaction-local setting;
--   ddl_command_end     compare with the catalog now; for each observer whose names changed,
--                       record the old names for the events up to the event sequence's last
--                       value (observers.observer_names) and follow the rename in
--                       observers.observer (ordering_key, columns).
--
-- The event id boundary is exact for a table rename, SET SCHEMA and DROP TABLE: they hold an
-- ACCESS EXCLUSIVE lock on the table, so every event of the table captured before has a smaller id
-- than any captured after. ALTER SCHEMA ... RENAME does not lock the tables: a transaction writing
-- while it commits may get either name.
--
-- Neither trigger may break the user's DDL: a failure is reported as a WARNING.

-- Every observer's names as the catalog has them now: {"<observer id>": {"label": text or null
-- (table gone), "key": [[attnum, name], ...], "columns": [[attnum, name], ...]}}.
CREATE FUNCTION observers._names_now()
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(o.id::text, jsonb_build_object(
               'label', (SELECT n.nspname || '.' || c.relname
                           FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                          WHERE c.oid = o.table_name),
               'key', observers._names_attnums(o.table_name, o.ordering_key),
               'columns', observers._names_attnums(o.table_name, o.columns))), '{}'::jsonb)
      FROM observers.observer AS o
$$;

-- [[attnum, name], ...] for a list of column names (attnum null when there is no such column).
CREATE FUNCTION observers._names_attnums(p_table regclass, p_names text[])
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_agg(jsonb_build_array(
               (SELECT a.attnum FROM pg_attribute AS a
                 WHERE a.attrelid = p_table AND a.attname = k.name AND NOT a.attisdropped),
               k.name) ORDER BY k.ord)
      FROM unnest(p_names) WITH ORDINALITY AS k(name, ord)
$$;

-- The names of a remembered list now: a column that still exists under its attnum has its
-- current name, anything else keeps its remembered name.
CREATE FUNCTION observers._names_follow(p_table regclass, p_remembered jsonb)
RETURNS text[]
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT array_agg(coalesce((SELECT a.attname::text FROM pg_attribute AS a
                                WHERE a.attrelid = p_table AND a.attnum = (k.item ->> 0)::int2
                                  AND NOT a.attisdropped),
                              k.item ->> 1) ORDER BY k.ord)
      FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_remembered) = 'array' THEN p_remembered END)
           WITH ORDINALITY AS k(item, ord)
$$;

CREATE FUNCTION observers._names_ddl_start()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('pg_observers.names_before', observers._names_now()::text, true);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pg_observers could not remember observer names before this command: %', SQLERRM
        USING HINT = 'Events captured before a rename of an observed table may be delivered with its new name.';
END
$$;

CREATE FUNCTION observers._names_ddl_end()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_before jsonb;
    v_until  bigint;
    v_label  text;
    v_key    text[];
    v_cols   text[];
    r        record;
BEGIN
    v_before := nullif(current_setting('pg_observers.names_before', true), '')::jsonb;
    IF v_before IS NULL OR v_before = '{}'::jsonb THEN
        RETURN;
    END IF;
    PERFORM set_config('pg_observers.names_before', '', true);
    FOR r IN
        SELECT o.id, o.table_name, o.ordering_key, o.columns, b.value AS was
          FROM observers.observer AS o
          JOIN jsonb_each(v_before) AS b ON b.key = o.id::text
         WHERE b.value ->> 'label' IS NOT NULL
    LOOP
        v_label := (SELECT n.nspname || '.' || c.relname
                      FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                     WHERE c.oid = r.table_name);
        v_key := observers._names_follow(r.table_name, r.was -> 'key');
        v_cols := observers._names_follow(r.table_name, r.was -> 'columns');
        CONTINUE WHEN v_label IS NOT DISTINCT FROM r.was ->> 'label'
                  AND v_key IS NOT DISTINCT FROM r.ordering_key
                  AND v_cols IS NOT DISTINCT FROM r.columns;
        v_until := observers._event_id_high();
        -- two renames without an event in between: the first one's names are the right ones
        INSERT INTO observers.observer_names (observer_id, until_id, table_label, ordering_key)
        VALUES (r.id, v_until, r.was ->> 'label',
                (SELECT array_agg(k.item ->> 1 ORDER BY k.ord)
                   FROM jsonb_array_elements(CASE WHEN jsonb_typeof(r.was -> 'key') = 'array'
                                                  THEN r.was -> 'key' END)
                        WITH ORDINALITY AS k(item, ord)))
        ON CONFLICT (observer_id, until_id) DO NOTHING;
        UPDATE observers.observer AS o
           SET ordering_key = v_key, columns = v_cols
         WHERE o.id = r.id
           AND (o.ordering_key IS DISTINCT FROM v_key OR o.columns IS DISTINCT FROM v_cols);
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pg_observers could not record the names of observed tables changed by this command: %', SQLERRM
        USING HINT = 'Events captured before the change may be delivered with the new names.';
END
$$;

CREATE EVENT TRIGGER observers_names_start ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA', 'DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION observers._names_ddl_start();
CREATE EVENT TRIGGER observers_names_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA', 'DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION observers._names_ddl_end();
