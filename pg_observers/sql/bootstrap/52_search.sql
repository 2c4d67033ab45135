-- pg_observers: the searchable audit trail (docs/SEARCH.md)
--
-- Every captured event, delivered or not, is copied into observers.search_doc OFF the write
-- path: the capture trigger is unchanged; the worker (or cron) calls observers.search_index(),
-- which follows a cursor of its own over the outbox and indexes a page of events per call.
--
--   feeds         observers.feed_cursor: named snapshot cursors over the whole outbox (all
--                 observers, all groups), the same design as a group's checkpoint (snap_lo,
--                 snap_hi, id floors; docs/ARCHITECTURE.md "No gaps"), without a lease: a feed
--                 is an idempotent copy (search_doc's key, Elasticsearch's create + _id), so two
--                 workers feeding the same copy only cost time. Feeds: 'search' (this file) and
--                 'elasticsearch' (the worker's sink). maintain() keeps the outbox partitions a
--                 feed has not passed yet.
--   search_doc    one row per event, partitioned by day (UTC) on captured_at like the outbox,
--                 dropped whole after observers.search_config.retention (default 30 days) by
--                 observers.search_maintain(); full text (tsvector, GIN) over the values of the
--                 payload; btree on (captured_at, event_id) for newest-first paging.
--   search_field  the payload fields the user declared worth an index (search_add_field).
--   search(), search_facets(), search_timeseries(): the operator's SQL.
--
-- Who may read it: the audit trail holds a copy of every payload, like the outbox. Only
-- observers_admin reads it (SELECT on the tables, EXECUTE on the search functions, which run
-- with the caller's rights); the worker may only fill it. See docs/SECURITY.md.

-- Feeds ----------------------------------------------------------------------------------------

CREATE TABLE observers.feed_cursor (
    feed        text        PRIMARY KEY
                CONSTRAINT feed_name_format CHECK (feed ~ '^[a-z][a-z0-9_]{0,62}$'),
    snap_lo     pg_snapshot NOT NULL DEFAULT '1:1:',
    snap_hi     pg_snapshot,
    last_id     bigint      NOT NULL DEFAULT 0,
    max_id      bigint,
    floor_xids  xid8[]      NOT NULL DEFAULT '{}',
    floor_seqs  bigint[]    NOT NULL DEFAULT '{}',
    passed      bigint      NOT NULL DEFAULT 0,     -- events passed since the feed was created
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE observers.feed_cursor IS
    'Snapshot cursors over the whole outbox for copies of it (search index, Elasticsearch). maintain() keeps what a feed has not passed; drop an unused feed with observers.feed_drop().';

-- Open (or resume) the feed's batch: the events visible in snap_hi and not in snap_lo, of every
-- observer. Exactly batch_open()'s reasoning for the id floor (20_worker_api.sql), without a
-- group filter. Must be the first statement of its transaction for the floor history to grow.
CREATE FUNCTION observers._feed_open(p_feed text)
RETURNS observers.feed_cursor
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c       observers.feed_cursor;
    v_seq   bigint;
    v_xid   xid8;
    v_hi    pg_snapshot;
    v_max   bigint;
    v_floor bigint := 0;
    v_pick  int := 0;
    v_xids  xid8[];
    v_seqs  bigint[];
BEGIN
    v_seq := observers._event_id_high();   -- as batch_open reads it (20_worker_api.sql)
    IF pg_current_xact_id_if_assigned() IS NULL THEN
        v_xid := pg_current_xact_id();
    END IF;

    INSERT INTO observers.feed_cursor (feed) VALUES (p_feed) ON CONFLICT (feed) DO NOTHING;
    SELECT * INTO STRICT c FROM observers.feed_cursor AS k WHERE k.feed = p_feed FOR UPDATE;
    IF c.snap_hi IS NOT NULL THEN
        RETURN c;
    END IF;

    v_hi := pg_current_snapshot();
    FOR i IN REVERSE coalesce(array_length(c.floor_xids, 1), 0) .. 1 LOOP
        IF c.floor_xids[i] < pg_snapshot_xmin(c.snap_lo) THEN
            v_pick := i;
            v_floor := c.floor_seqs[i];
            EXIT;
        END IF;
    END LOOP;
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

    IF v_floor > 0 AND EXISTS (
           SELECT 1 FROM observers.event AS e
            WHERE e.id > v_floor - 256 AND e.id <= v_floor
              AND pg_visible_in_snapshot(e.txid, v_hi)
              AND NOT pg_visible_in_snapshot(e.txid, c.snap_lo)) THEN
        RAISE WARNING 'pg_observers: id floor % of feed "%" is above an event of the batch; scanning the batch from id 0',
            v_floor, p_feed
            USING HINT = 'Nothing is lost. Please report this with the output of SELECT * FROM observers.feed_cursor.';
        v_floor := 0;
    END IF;

    SELECT e.id INTO v_max
      FROM observers.event AS e
     WHERE e.id > v_floor
       AND pg_visible_in_snapshot(e.txid, v_hi)
       AND NOT pg_visible_in_snapshot(e.txid, c.snap_lo)
     ORDER BY e.id DESC
     LIMIT 1;

    UPDATE observers.feed_cursor AS k
       SET snap_hi = v_hi, max_id = v_max, last_id = v_floor,
           floor_xids = v_xids, floor_seqs = v_seqs, updated_at = now()
     WHERE k.feed = p_feed
    RETURNING * INTO c;
    RETURN c;
END
$$;

-- The next events of a feed, in id order, at most `lim`: what a copy of the outbox indexes
-- next. Opens the feed's batch when none is open; closes an exhausted batch and opens the next
-- one (so one call always makes progress when there is any). Call it as the first statement of
-- a transaction (the id floors, see _feed_open) and, once the copies are durable, call
-- feed_save() with the last id written. Reads only what the batch cursor allows: a transaction
-- still running is picked up by a later batch, whatever its ids (guarantee 2.2).
CREATE FUNCTION observers.feed_fetch(feed text, lim int)
RETURNS TABLE (id bigint, observer_id int, observer text, table_name text, op text, txid bigint,
               captured_at timestamptz, new jsonb, old jsonb, changed text[])
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    c observers.feed_cursor;
BEGIN
    PERFORM observers._require_text('feed', feed_fetch.feed);
    IF lim IS NULL OR lim < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('lim must be a positive number, got %s', coalesce(lim::text, 'NULL'));
    END IF;
    FOR attempt IN 1..2 LOOP
        c := observers._feed_open(feed_fetch.feed);
        EXIT WHEN c.max_id IS NOT NULL AND c.last_id < c.max_id;
        -- empty or exhausted: close it; the next loop (or call) opens the next batch
        UPDATE observers.feed_cursor AS k
           SET snap_lo = k.snap_hi, snap_hi = NULL, last_id = 0, max_id = NULL, updated_at = now()
         WHERE k.feed = feed_fetch.feed;
        -- nothing new since the batch opened: done (a second open would find the same nothing)
        IF attempt = 2 OR c.max_id IS NULL THEN
            RETURN;
        END IF;
    END LOOP;

    RETURN QUERY
    SELECT e.id, e.observer_id, o.name,
           coalesce(h.table_label, n.nspname || '.' || cl.relname, o.table_name::oid::text),
           e.op, e.txid::text::bigint, e.captured_at, e.new, e.old, e.changed
      FROM observers.event AS e
      LEFT JOIN observers.observer AS o ON o.id = e.observer_id
      LEFT JOIN pg_class AS cl ON cl.oid = o.table_name
      LEFT JOIN pg_namespace AS n ON n.oid = cl.relnamespace
      LEFT JOIN LATERAL (SELECT x.table_label
                           FROM observers.observer_names AS x
                          WHERE x.observer_id = e.observer_id AND x.until_id >= e.id
                          ORDER BY x.until_id
                          LIMIT 1) AS h ON true
     WHERE e.id > c.last_id
       AND e.id <= c.max_id
       AND pg_visible_in_snapshot(e.txid, c.snap_hi)
       AND NOT pg_visible_in_snapshot(e.txid, c.snap_lo)
     ORDER BY e.id
     LIMIT lim;
END
$$;

-- Record a feed's progress: every event of the open batch up to `last_id` is copied. Only moves
-- forward; closes the batch when it reaches its end. Returns false when there is no open batch
-- or `last_id` is not ahead (nothing to do: a second worker got there first).
CREATE FUNCTION observers.feed_save(feed text, last_id bigint, copied bigint DEFAULT 0)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    c observers.feed_cursor;
BEGIN
    SELECT * INTO c FROM observers.feed_cursor AS k WHERE k.feed = feed_save.feed FOR UPDATE;
    IF NOT FOUND OR c.snap_hi IS NULL OR feed_save.last_id IS NULL
       OR feed_save.last_id <= c.last_id THEN
        RETURN false;
    END IF;
    IF feed_save.last_id >= coalesce(c.max_id, 0) THEN
        UPDATE observers.feed_cursor AS k
           SET snap_lo = k.snap_hi, snap_hi = NULL, last_id = 0, max_id = NULL,
               passed = k.passed + coalesce(copied, 0), updated_at = now()
         WHERE k.feed = feed_save.feed;
    ELSE
        UPDATE observers.feed_cursor AS k
           SET last_id = feed_save.last_id, passed = k.passed + coalesce(copied, 0),
               updated_at = now()
         WHERE k.feed = feed_save.feed;
    END IF;
    RETURN true;
END
$$;

-- Items a copy could not take (an Elasticsearch mapping error: 400), with the reason and the
-- document, so that the feed's cursor can move on. Not observers.dlq: a dead letter there is an
-- (event, action) pair that dlq_retry() hands back to an observer's action; these belong to no
-- observer action. Kept by pg_dump like the dead letters.
CREATE TABLE observers.feed_dead_letter (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    feed       text        NOT NULL,
    event_id   bigint      NOT NULL,
    target     text,                    -- where it was going (the index)
    status     integer,                 -- the destination's answer for the item
    error      text        NOT NULL,
    document   jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feed_dead_letter_event_idx ON observers.feed_dead_letter (feed, event_id);
SELECT pg_catalog.pg_extension_config_dump('observers.feed_dead_letter', '');
SELECT pg_catalog.pg_extension_config_dump('observers.feed_dead_letter_id_seq', '');

CREATE FUNCTION observers.feed_dead_letter_add(feed text, event_ids bigint[], targets text[],
                                               statuses int[], errors text[], documents text[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM observers._require_text('feed', feed);
    INSERT INTO observers.feed_dead_letter (feed, event_id, target, status, error, document)
    SELECT feed_dead_letter_add.feed, d.event_id, d.target, d.status,
           coalesce(nullif(d.error, ''), 'no reason given'), d.document::jsonb
      FROM unnest(event_ids, targets, statuses, errors, documents)
           AS d(event_id, target, status, error, document);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Forget a feed (a copy that is no longer fed): its cursor stops holding outbox partitions.
CREATE FUNCTION observers.feed_drop(feed text)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH d AS (DELETE FROM observers.feed_cursor AS k WHERE k.feed = $1 RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM d)
$$;

-- The oldest transaction some feed has not passed (for maintain()); NULL without feeds.
CREATE FUNCTION observers._feeds_min_xmin()
RETURNS xid8
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT min(pg_snapshot_xmin(k.snap_lo)) FROM observers.feed_cursor AS k $$;

-- The search index -------------------------------------------------------------------------------

-- The search index's settings: no row means the defaults (retention 30 days). Kept by pg_dump
-- (empty until observers.search_configure() is called, so a restore never meets a second row).
CREATE TABLE observers.search_config (
    singleton   boolean  PRIMARY KEY DEFAULT true CONSTRAINT search_config_one_row CHECK (singleton),
    retention   interval NOT NULL DEFAULT '30 days'
                CONSTRAINT search_retention_positive CHECK (retention > interval '0')
);

CREATE FUNCTION observers._search_retention()
RETURNS interval
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce((SELECT k.retention FROM observers.search_config AS k), interval '30 days') $$;

CREATE TABLE observers.search_doc (
    event_id    bigint      NOT NULL,
    observer_id integer     NOT NULL,
    observer    text,
    table_name  text,
    op          text        NOT NULL,
    txid        bigint      NOT NULL,
    captured_at timestamptz NOT NULL,
    -- {"new": ..., "old": ..., "changed": [...]}: field paths are written new.col / old.col
    doc         jsonb       NOT NULL,
    -- the string, number and boolean values of doc, 'simple' configuration (no stemming, no stop
    -- words: payloads are identifiers, codes and names more than prose)
    tsv         tsvector    NOT NULL,
    indexed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, captured_at)
) PARTITION BY RANGE (captured_at);
COMMENT ON TABLE observers.search_doc IS
    'The searchable audit trail: one row per captured event, filled by observers.search_index() off the write path; partitioned by day (UTC), kept for observers.search_config.retention.';
CREATE TABLE observers.search_doc_default PARTITION OF observers.search_doc DEFAULT;
CREATE INDEX search_doc_time_idx ON observers.search_doc (captured_at, event_id);
CREATE INDEX search_doc_table_idx ON observers.search_doc (table_name, captured_at);
CREATE INDEX search_doc_tsv_idx ON observers.search_doc USING gin (tsv);

CREATE TABLE observers.search_field (
    path       text        PRIMARY KEY,
    index_name text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE observers.search_field IS
    'Payload fields with an index of their own (observers.search_add_field).';
SELECT pg_catalog.pg_extension_config_dump('observers.search_config', '');
SELECT pg_catalog.pg_extension_config_dump('observers.search_field', '');

CREATE FUNCTION observers._search_partition_name(p_day date)
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$ SELECT 'search_doc_p' || to_char(p_day, 'YYYYMMDD') $$;

-- Is the relation a member of the extension? (40_maintain.sql has the same for the outbox; this
-- file is installed before it, because maintain() asks _feeds_min_xmin().)
CREATE FUNCTION observers._search_is_member(p_rel regclass)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_depend
                    WHERE classid = 'pg_class'::regclass AND objid = p_rel
                      AND refclassid = 'pg_extension'::regclass AND deptype = 'e')
$$;

-- Index the next `lim` events of the outbox (feed 'search') and record the progress, in one
-- transaction: the copy and the cursor commit together, so a crash loses nothing and indexes
-- nothing twice. Returns how many events were indexed; 0 means the index is up to date with
-- what had committed when it was called. Call it as the first statement of a transaction.
CREATE FUNCTION observers.search_index(lim int DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_last  bigint;
    v_count integer;
BEGIN
    WITH f AS (
        SELECT * FROM observers.feed_fetch('search', lim)
    ), ins AS (
        INSERT INTO observers.search_doc
               (event_id, observer_id, observer, table_name, op, txid, captured_at, doc, tsv)
        SELECT f.id, f.observer_id, f.observer, f.table_name, f.op, f.txid, f.captured_at, d.doc,
               jsonb_to_tsvector('simple'::regconfig, d.doc, '["string", "numeric", "boolean"]')
          FROM f
         CROSS JOIN LATERAL (SELECT jsonb_strip_nulls(jsonb_build_object(
                                        'new', f.new, 'old', f.old, 'changed', to_jsonb(f.changed)))
                                    AS doc) AS d
        ON CONFLICT DO NOTHING
    )
    SELECT max(f.id), count(*) INTO v_last, v_count FROM f;
    IF v_last IS NOT NULL THEN
        PERFORM observers.feed_save('search', v_last, v_count);
    END IF;
    RETURN v_count;
END
$$;

-- Partitions of the search index: create today .. today + 7 (UTC), drop the days that ended more
-- than observers.search_config.retention ago, delete old rows from the DEFAULT partition.
-- Only observers.search_index() writes the table, so its DDL locks never touch the user's write
-- path; still, it waits at most 50ms for a lock and skips what it could not lock.
CREATE FUNCTION observers.search_maintain()
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '50ms'
AS $$
DECLARE
    v_today   date := (now() AT TIME ZONE 'UTC')::date;
    v_cutoff  timestamptz;
    v_day     date;
    v_name    text;
    v_rel     regclass;
    v_created text[] := '{}';
    v_dropped text[] := '{}';
    v_skipped text[] := '{}';
    v_deleted bigint;
    r         record;
BEGIN
    v_cutoff := now() - observers._search_retention();
    FOR i IN 0..7 LOOP
        v_day := v_today + i;
        v_name := observers._search_partition_name(v_day);
        CONTINUE WHEN to_regclass('observers.' || v_name) IS NOT NULL;
        BEGIN
            EXECUTE format('CREATE TABLE observers.%I PARTITION OF observers.search_doc FOR VALUES FROM (%L) TO (%L)',
                           v_name, to_char(v_day, 'YYYY-MM-DD') || ' 00:00:00+00',
                           to_char(v_day + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
            v_rel := ('observers.' || v_name)::regclass;
            IF NOT observers._search_is_member(v_rel) THEN
                EXECUTE format('ALTER EXTENSION pg_observers ADD TABLE %s', v_rel);
            END IF;
            EXECUTE format('GRANT SELECT ON %s TO observers_admin', v_rel);
            v_created := v_created || v_name;
        EXCEPTION
            WHEN lock_not_available THEN
                v_skipped := v_skipped || (v_name || ' (search index busy, lock timeout)');
            WHEN check_violation THEN
                v_skipped := v_skipped || (v_name || ' (its day has rows in search_doc_default)');
        END;
    END LOOP;

    FOR r IN
        SELECT c.oid::regclass AS rel, c.relname,
               (to_date(substr(c.relname, 13), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' AS upper_bound
          FROM pg_inherits AS i
          JOIN pg_class AS c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'observers.search_doc'::regclass
           AND c.relname ~ '^search_doc_p[0-9]{8}$'
         ORDER BY c.relname
    LOOP
        CONTINUE WHEN r.upper_bound >= v_cutoff;
        BEGIN
            IF observers._search_is_member(r.rel) THEN
                EXECUTE format('ALTER EXTENSION pg_observers DROP TABLE %s', r.rel);
            END IF;
            EXECUTE format('DROP TABLE %s', r.rel);
            v_dropped := v_dropped || r.relname::text;
        EXCEPTION WHEN lock_not_available THEN
            v_skipped := v_skipped || (r.relname || ' (search index busy, lock timeout)');
        END;
    END LOOP;

    DELETE FROM observers.search_doc_default WHERE captured_at < v_cutoff;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;

    -- declared field indexes that are missing (after a restore: pg_dump keeps search_field, not
    -- the indexes of the extension's tables)
    FOR r IN SELECT f.path FROM observers.search_field AS f
              WHERE to_regclass('observers.' || quote_ident(f.index_name)) IS NULL LOOP
        PERFORM observers._search_create_field_index(r.path);
    END LOOP;

    RETURN format('search index: created %s%s; dropped %s%s; skipped %s%s; deleted %s old rows from search_doc_default',
                  cardinality(v_created),
                  CASE WHEN v_created <> '{}' THEN ' (' || array_to_string(v_created, ', ') || ')' ELSE '' END,
                  cardinality(v_dropped),
                  CASE WHEN v_dropped <> '{}' THEN ' (' || array_to_string(v_dropped, ', ') || ')' ELSE '' END,
                  cardinality(v_skipped),
                  CASE WHEN v_skipped <> '{}' THEN ' (' || array_to_string(v_skipped, ', ') || ')' ELSE '' END,
                  v_deleted);
END
$$;

-- Set the search index's retention (how long a day stays searchable after it ended).
CREATE FUNCTION observers.search_configure(retention interval)
RETURNS interval
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF retention IS NULL OR retention <= interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('retention must be a positive interval, got %s', coalesce(retention::text, 'NULL'));
    END IF;
    INSERT INTO observers.search_config AS k (retention) VALUES (search_configure.retention)
    ON CONFLICT (singleton) DO UPDATE SET retention = excluded.retention;
    RETURN retention;
END
$$;

-- A field path `new.customer_id` / `old.status` / `new.address.city` as a text[] path into doc.
-- Segments are column or key names: letters, digits, _ and $ (no dots, no quotes).
CREATE FUNCTION observers._search_path(p_field text)
RETURNS text[]
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_path text[];
BEGIN
    IF p_field IS NULL OR p_field !~ '^(new|old)(\.[A-Za-z_][A-Za-z0-9_$]{0,62})+$' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s is not a field path', coalesce(quote_literal(p_field), 'NULL')),
            HINT = 'Write new.<column> or old.<column> (new.customer_id, old.status, new.address.city).';
    END IF;
    v_path := string_to_array(p_field, '.');
    IF cardinality(v_path) > 8 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('field path %s is deeper than 8 levels', quote_literal(p_field));
    END IF;
    RETURN v_path;
END
$$;

-- The SQL expression of a field: the text of the JSON value (numbers as written by to_jsonb,
-- strings unquoted), the same expression as the field's index so that the planner uses it.
CREATE FUNCTION observers._search_field_expr(p_field text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('(d.doc #>> %L::text[])', observers._search_path(p_field)::text) $$;

-- Declare a payload field worth an index of its own: a btree on its text value in every
-- partition (present and future). Filters (`fields => '{"new.customer_id": 42}'`) and facets
-- on the field then use it. Building it locks the search index (not the outbox) while it runs.
CREATE FUNCTION observers._search_field_index_name(p_field text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT left('search_doc_f_' || replace(array_to_string(observers._search_path(p_field), '_'), '$', '_'), 54)
           || '_' || left(md5(p_field), 8)
$$;

CREATE FUNCTION observers._search_create_field_index(p_field text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_index text := observers._search_field_index_name(p_field);
BEGIN
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON observers.search_doc ((doc #>> %L::text[]), captured_at)',
                   v_index, observers._search_path(p_field)::text);
    INSERT INTO observers.search_field (path, index_name) VALUES (p_field, v_index)
    ON CONFLICT (path) DO UPDATE SET index_name = excluded.index_name;
    RETURN v_index;
END
$$;

CREATE FUNCTION observers.search_add_field(path text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_index text := observers._search_field_index_name(search_add_field.path);
BEGIN
    IF EXISTS (SELECT 1 FROM observers.search_field AS f WHERE f.path = search_add_field.path)
       AND to_regclass('observers.' || quote_ident(v_index)) IS NOT NULL THEN
        RETURN v_index;
    END IF;
    RETURN observers._search_create_field_index(search_add_field.path);
END
$$;

CREATE FUNCTION observers.search_drop_field(path text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_index text;
BEGIN
    DELETE FROM observers.search_field AS f WHERE f.path = search_drop_field.path
    RETURNING f.index_name INTO v_index;
    IF v_index IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP INDEX IF EXISTS observers.%I', v_index);
    RETURN true;
END
$$;

-- The WHERE clause shared by search(), search_facets() and search_timeseries(), over alias d.
-- Every value is quoted here (format %L); field paths are validated by _search_path().
CREATE FUNCTION observers._search_where(p_query text, p_table text, p_observer text, p_op text,
                                        p_since timestamptz, p_until timestamptz, p_fields jsonb)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_where text[] := ARRAY['true'];
    v_table text := p_table;
    v_op    text := upper(p_op);
    kv      record;
BEGIN
    IF p_query IS NOT NULL AND btrim(p_query) <> '' THEN
        v_where := v_where || format('d.tsv @@ websearch_to_tsquery(''simple''::regconfig, %L)', p_query);
    END IF;
    IF v_table IS NOT NULL THEN
        IF position('.' IN v_table) = 0 THEN
            v_table := 'public.' || v_table;    -- orders means public.orders, like regclass would
        END IF;
        v_where := v_where || format('d.table_name = %L', v_table);
    END IF;
    IF p_observer IS NOT NULL THEN
        v_where := v_where || format('d.observer = %L', p_observer);
    END IF;
    IF v_op IS NOT NULL THEN
        IF v_op NOT IN ('INSERT', 'UPDATE', 'DELETE') THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('op must be INSERT, UPDATE or DELETE, got %s', quote_literal(p_op));
        END IF;
        v_where := v_where || format('d.op = %L', v_op);
    END IF;
    IF p_since IS NOT NULL THEN
        v_where := v_where || format('d.captured_at >= %L::timestamptz', p_since);
    END IF;
    IF p_until IS NOT NULL THEN
        v_where := v_where || format('d.captured_at < %L::timestamptz', p_until);
    END IF;
    IF p_fields IS NOT NULL THEN
        IF jsonb_typeof(p_fields) <> 'object' THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'fields must be a JSON object such as {"new.customer_id": 42}';
        END IF;
        FOR kv IN SELECT * FROM jsonb_each(p_fields) ORDER BY key LOOP
            IF jsonb_typeof(kv.value) IN ('object', 'array') THEN
                RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                    MESSAGE = format('the value of field %s must be a string, number, boolean or null', kv.key);
            ELSIF jsonb_typeof(kv.value) = 'null' THEN
                v_where := v_where || format('%s IS NULL', observers._search_field_expr(kv.key));
            ELSE
                v_where := v_where || format('%s = %L', observers._search_field_expr(kv.key), kv.value #>> '{}');
            END IF;
        END LOOP;
    END IF;
    RETURN array_to_string(v_where, ' AND ');
END
$$;

-- Search the audit trail: newest first ((captured_at, event_id) descending), `lim` rows per page.
-- (The result columns observer_name, table_label and operation are named apart from the filter
-- parameters observer, table_name and op: PostgreSQL does not allow a name twice.)
-- The next page: pass the last row's captured_at and event_id as before_at / before_id.
--   query     websearch syntax over the payload's values: refund, "exact phrase", a -b, a or b
--   table_name  schema.table (a bare name means public.name); observer; op
--   since / until  captured_at >= since AND captured_at < until
--   fields    {"new.customer_id": 42, "new.status": "paid"}: equality on the text of the value
CREATE FUNCTION observers.search(query text DEFAULT NULL, table_name text DEFAULT NULL,
                                 observer text DEFAULT NULL, op text DEFAULT NULL,
                                 since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                 fields jsonb DEFAULT NULL, lim int DEFAULT 50,
                                 before_at timestamptz DEFAULT NULL, before_id bigint DEFAULT NULL)
RETURNS TABLE (event_id bigint, captured_at timestamptz, observer_name text, table_label text,
               operation text, txid bigint, new jsonb, old jsonb, changed jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_where text := observers._search_where(query, search.table_name, search.observer, search.op,
                                            since, until, fields);
BEGIN
    IF lim IS NULL OR lim < 1 OR lim > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('lim must be between 1 and 10000, got %s', coalesce(lim::text, 'NULL'));
    END IF;
    IF (before_at IS NULL) <> (before_id IS NULL) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'before_at and before_id go together (the last row''s captured_at and event_id)';
    END IF;
    IF before_at IS NOT NULL THEN
        v_where := v_where || format(' AND (d.captured_at, d.event_id) < (%L::timestamptz, %s)',
                                     before_at, before_id);
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT d.event_id, d.captured_at, d.observer, d.table_name, d.op, d.txid,
                d.doc -> ''new'', d.doc -> ''old'', d.doc -> ''changed''
           FROM observers.search_doc AS d
          WHERE %s
          ORDER BY d.captured_at DESC, d.event_id DESC
          LIMIT %s', v_where, lim);
END
$$;

-- Counts by a facet over the events a search would find: facet is table, op, observer, or a
-- field path (new.status). The `lim` largest values, ties by value.
CREATE FUNCTION observers.search_facets(facet text, query text DEFAULT NULL,
                                        table_name text DEFAULT NULL, observer text DEFAULT NULL,
                                        op text DEFAULT NULL, since timestamptz DEFAULT NULL,
                                        until timestamptz DEFAULT NULL, fields jsonb DEFAULT NULL,
                                        lim int DEFAULT 20)
RETURNS TABLE (value text, events bigint)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_where text := observers._search_where(query, search_facets.table_name, search_facets.observer,
                                            search_facets.op, since, until, fields);
    v_expr  text;
BEGIN
    v_expr := CASE facet
                  WHEN 'table' THEN 'd.table_name'
                  WHEN 'op' THEN 'd.op'
                  WHEN 'observer' THEN 'd.observer'
                  ELSE observers._search_field_expr(facet)
              END;
    IF lim IS NULL OR lim < 1 OR lim > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('lim must be between 1 and 10000, got %s', coalesce(lim::text, 'NULL'));
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT %s, count(*) FROM observers.search_doc AS d WHERE %s
          GROUP BY 1 ORDER BY 2 DESC, 1 NULLS LAST LIMIT %s', v_expr, v_where, lim);
END
$$;

-- Counts per minute / hour / day (UTC buckets) over the events a search would find; buckets
-- without events are left out.
CREATE FUNCTION observers.search_timeseries(bucket text, query text DEFAULT NULL,
                                            table_name text DEFAULT NULL, observer text DEFAULT NULL,
                                            op text DEFAULT NULL, since timestamptz DEFAULT NULL,
                                            until timestamptz DEFAULT NULL, fields jsonb DEFAULT NULL)
RETURNS TABLE (bucket_start timestamptz, events bigint)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_where text := observers._search_where(query, search_timeseries.table_name,
                                            search_timeseries.observer, search_timeseries.op,
                                            since, until, fields);
BEGIN
    IF bucket IS NULL OR bucket NOT IN ('minute', 'hour', 'day') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('bucket must be minute, hour or day, got %s', coalesce(quote_literal(bucket), 'NULL'));
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT date_trunc(%L, d.captured_at AT TIME ZONE ''UTC'') AT TIME ZONE ''UTC'', count(*)
           FROM observers.search_doc AS d WHERE %s GROUP BY 1 ORDER BY 1', bucket, v_where);
END
$$;

-- How far the copies are: one row per feed.
CREATE FUNCTION observers.feed_status()
RETURNS TABLE (feed text, batch_open boolean, last_id bigint, max_id bigint, passed bigint,
               backlog bigint, updated_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.feed, k.snap_hi IS NOT NULL, k.last_id, k.max_id, k.passed,
           (SELECT count(*) FROM observers.event AS e
             WHERE e.id > k.last_id
               AND NOT pg_visible_in_snapshot(e.txid, k.snap_lo)
               AND pg_visible_in_snapshot(e.txid, pg_current_snapshot())),
           k.updated_at
      FROM observers.feed_cursor AS k
     ORDER BY k.feed
$$;

SELECT observers.search_maintain();
