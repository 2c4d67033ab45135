-- pg_observers: roles
--
-- Roles are cluster-wide objects: they are created once (if missing) and survive
-- DROP EXTENSION. All three are NOLOGIN group roles.
--
--   observers_admin    operators: create/drop/enable/disable observers, status(), read every
--                      table of schema observers (payloads included).
--   observers_worker   the fraiseql-observers worker: lease, batches, checkpoints, DLQ,
--                      heartbeats, maintain(), and create_observer() (the worker applies the
--                      observers of its YAML file at start).
--   observers_capture  the identity the capture trigger runs as (owner of the SECURITY DEFINER
--                      trigger function): may only INSERT into observers.event. Observer
--                      conditions are evaluated with its rights, never with superuser rights.
--                      Never grant this role to anyone.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'observers_admin') THEN
        CREATE ROLE observers_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'observers_worker') THEN
        CREATE ROLE observers_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'observers_capture') THEN
        CREATE ROLE observers_capture NOLOGIN NOINHERIT;
    END IF;
END
$roles$;
