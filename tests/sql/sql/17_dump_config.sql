-- What pg_dump keeps of the extension (10_tables.sql), the installation id a restore brings back,
-- and the webhook-id built from it. The round trip itself (the real pg_dump and pg_restore, a
-- worker on the restored database) is the end-to-end test dump_restore.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

-- the tables and sequences pg_dump dumps (everything else of the extension it skips)
SELECT c.relname, c.relkind, coalesce(x.cond, '') AS filter
  FROM pg_extension AS e,
       unnest(e.extconfig, e.extcondition) AS x(rel, cond)
  JOIN pg_class AS c ON c.oid = x.rel
 WHERE e.extname = 'pg_observers'
 ORDER BY 1;

-- not dumped, on purpose: the outbox and its partitions, checkpoints (snapshots of one
-- cluster's transaction ids), leases, heartbeats, the attempt log, deduplication state
SELECT c.relname
  FROM pg_class AS c
 WHERE c.relnamespace = 'observers'::regnamespace AND c.relkind IN ('r', 'p', 'S')
   AND c.relname !~ '_p\d{8}$'
   AND c.oid <> ALL ((SELECT extconfig FROM pg_extension WHERE extname = 'pg_observers')::oid[])
 ORDER BY 1;

-- one installation row; a restore loads the dumped row after CREATE EXTENSION made a new one,
-- and the row inserted last replaces the other
SELECT count(*) AS rows FROM observers.installation;
INSERT INTO observers.installation (id, created_at)
VALUES ('0b0e5a3c-0f5a-4c1e-9d3a-1f2e3d4c5b6a', '2026-01-01 00:00:00+00');
SELECT id, created_at = '2026-01-01 00:00:00+00' AS dumped_created_at FROM observers.installation;
-- with the trigger bypassed (a data-only restore with --disable-triggers) a second row is refused
ALTER TABLE observers.installation DISABLE TRIGGER installation_replace;
INSERT INTO observers.installation DEFAULT VALUES;
ALTER TABLE observers.installation ENABLE TRIGGER installation_replace;
SELECT count(*) AS rows FROM observers.installation;

-- the webhook-id: evt_<first 16 hex digits of the installation id>_<event id>_<action index>
-- (the worker's InstallationId::pair_id gives the same for this id: installation::tests)
SELECT observers._webhook_id(1042, 0) AS webhook_id, observers._webhook_id(7, 3) AS other;

-- the worker role reads the installation id (it builds the same webhook-ids)
CREATE ROLE dump_worker_test LOGIN IN ROLE observers_worker;
SET ROLE dump_worker_test;
SELECT id::text FROM observers.installation LIMIT 1;
RESET ROLE;
DROP ROLE dump_worker_test;
