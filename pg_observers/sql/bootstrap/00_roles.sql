-- pg_observers: roles
--
-- Roles are cluster-wide objects: they are created once (if missing) and survive
-- DROP EXTENSION. All three are NOLOGIN group roles.
--
--   observers_admin    operators: create/drop/enable/disable/repair observers, status(), the
--                      dead-letter queue (list, show, retry, purge), debug_event(), replay(),
--                      read every table of schema observers (payloads included).
--   observers_worker   the fraiseql-observers worker: lease, batches, checkpoints, DLQ,
--                      heartbeats, parked pairs, dedup state, the attempt log, maintain(),
--                      status(), and create_observer() (the worker applies the observers of its
--                      YAML file at start). No table with payloads, no retry/purge/replay.
--   observers_capture  the identity the capture trigger runs as (owner of the SECURITY DEFINER
--                      trigger function): may only INSERT into observers.event. Observer
--                      conditions are evaluated with its rights, never with superuser rights.
--                      Never grant this role to anyone.
-- CREATE EXTENSION may run in several databases of a cluster at the same time: two sessions can
-- both see a role missing and both create it, and the second one then fails on the catalog's
-- unique index once the first commits. So each CREATE ROLE tolerates a concurrent creator.
DO $roles$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES ('observers_admin', 'NOLOGIN'),
                                   ('observers_worker', 'NOLOGIN'),
                                   ('observers_capture', 'NOLOGIN NOINHERIT')) AS v(name, options)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', r.name, r.options);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created by a concurrent CREATE EXTENSION in another database
            END;
        END IF;
    END LOOP;
END
$roles$;
