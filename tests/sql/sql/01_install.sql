-- CREATE EXTENSION and what it creates (the contract of docs/ARCHITECTURE.md).
\set SHOW_CONTEXT never
CREATE EXTENSION pg_observers;

SELECT e.extname, e.extversion ~ '^\d+\.\d+\.\d+$' AS cargo_version, e.extrelocatable,
       n.nspname AS schema
  FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
 WHERE e.extname = 'pg_observers';

-- tables and sequences (daily partitions listed separately below)
SELECT c.relname, c.relkind
  FROM pg_class AS c
 WHERE c.relnamespace = 'observers'::regnamespace AND c.relkind IN ('r', 'p', 'S')
   AND c.relname !~ '^(event|dedup|attempt|job_finished|search_doc)_p\d{8}$'
 ORDER BY 1;

-- the outbox
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS default
  FROM pg_attribute AS a LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = 'observers.event'::regclass AND a.attnum > 0
 ORDER BY a.attnum;
SELECT pg_get_partkeydef('observers.event'::regclass);
SELECT i.indexrelid::regclass AS index, pg_get_indexdef(i.indexrelid)
  FROM pg_index AS i WHERE i.indrelid = 'observers.event'::regclass ORDER BY 1;
SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class AS c WHERE c.oid = 'observers.event_default'::regclass;
SELECT seqcache FROM pg_sequence WHERE seqrelid = 'observers.event_id_seq'::regclass;

-- eight daily partitions (UTC), today .. today + 7, members of the extension. "Today" is the
-- day of the CREATE EXTENSION transaction: now() is the same all along this test's first
-- transaction only, so the day is taken from the first partition and checked against the clock
-- with a day's tolerance (a run that crosses midnight UTC must pass too).
SELECT count(*) AS partitions,
       min(c.relname) IN (observers._partition_name((clock_timestamp() AT TIME ZONE 'UTC')::date),
                          observers._partition_name((clock_timestamp() AT TIME ZONE 'UTC')::date - 1)) AS first_is_today,
       max(c.relname) = observers._partition_name(to_date(substr(min(c.relname), 8), 'YYYYMMDD') + 7) AS last_is_first_plus_7,
       bool_and(observers._is_extension_member(c.oid)) AS members
  FROM pg_class AS c
 WHERE c.relnamespace = 'observers'::regnamespace AND c.relname ~ '^event_p\d{8}$';
SELECT bool_and(pg_get_expr(c.relpartbound, c.oid) =
                format('FOR VALUES FROM (%L) TO (%L)',
                       to_date(substr(c.relname, 8), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC',
                       (to_date(substr(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC')) AS utc_day_bounds
  FROM pg_class AS c
 WHERE c.relnamespace = 'observers'::regnamespace AND c.relname ~ '^event_p\d{8}$';
-- the attempt log and the dedup state: yesterday .. today + 7
SELECT c.relname ~ '^attempt' AS attempt, count(*) AS partitions
  FROM pg_class AS c
 WHERE c.relnamespace = 'observers'::regnamespace AND c.relname ~ '^(attempt|dedup)_p\d{8}$'
 GROUP BY 1 ORDER BY 1;

-- roles
SELECT rolname, rolcanlogin, rolsuper FROM pg_roles WHERE rolname LIKE 'observers\_%' ORDER BY 1;

-- public functions: signatures
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args
  FROM pg_proc AS p
 WHERE p.pronamespace = 'observers'::regnamespace AND p.proname !~ '^_'
 ORDER BY 1;
SELECT p.proname, pg_get_function_result(p.oid) AS result
  FROM pg_proc AS p
 WHERE p.pronamespace = 'observers'::regnamespace AND p.proname !~ '^_'
 ORDER BY 1;

-- SECURITY DEFINER, pinned search_path, owner, who may call them
SELECT p.proname,
       p.prosecdef AS secdef,
       p.proconfig,
       CASE WHEN p.proowner = 'observers_capture'::regrole THEN 'observers_capture'
            ELSE 'extension owner' END AS owner,
       has_function_privilege('observers_worker', p.oid, 'EXECUTE') AS worker,
       has_function_privilege('observers_admin', p.oid, 'EXECUTE') AS admin
  FROM pg_proc AS p
 WHERE p.pronamespace = 'observers'::regnamespace
 ORDER BY 1;

-- every function that runs with elevated rights pins search_path (capture() does it in code,
-- where it resolves names: see 90_privileges.sql)
SELECT p.proname FROM pg_proc AS p
 WHERE p.pronamespace = 'observers'::regnamespace AND p.prosecdef
   AND NOT coalesce(p.proconfig @> '{"search_path=pg_catalog, pg_temp"}', false);

-- PUBLIC can execute none of them
SELECT p.proname FROM pg_proc AS p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS a
 WHERE p.pronamespace = 'observers'::regnamespace AND a.grantee = 0 AND a.privilege_type = 'EXECUTE';

-- GUCs are registered when the library loads (any capture or call of one of our functions)
SELECT observers._retention_setting();
SELECT name, setting, unit, context FROM pg_settings WHERE name LIKE 'observers.%' ORDER BY 1;

-- an unknown observers.* setting is rejected once the prefix is reserved
SET observers.no_such_setting = 1;

-- maintain() right after CREATE EXTENSION has nothing to do (unless midnight UTC passed since
-- CREATE EXTENSION: then it creates the new day's partitions, which is right too)
SELECT CASE WHEN (SELECT min(c.relname) FROM pg_class AS c
                   WHERE c.relnamespace = 'observers'::regnamespace AND c.relname ~ '^event_p\d{8}$')
                 = observers._partition_name((now() AT TIME ZONE 'UTC')::date)
            THEN m
            ELSE regexp_replace(m, 'created \d+( \([^)]*\))?', 'created 0', 'g') END AS maintain
  FROM observers.maintain() AS m;

-- event triggers (names at capture time: 39_event_names.sql), members of the extension
SELECT e.evtname, e.evtevent, e.evtenabled, e.evttags,
       EXISTS (SELECT 1 FROM pg_depend AS d
                WHERE d.classid = 'pg_event_trigger'::regclass AND d.objid = e.oid AND d.deptype = 'e'
                  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_observers')) AS member
  FROM pg_event_trigger AS e ORDER BY 1;
