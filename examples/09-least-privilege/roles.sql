-- A least-privilege deployment: one role per job, none more powerful than it needs
-- (docs/SECURITY.md has the threat model). Run once as a superuser or the database owner, after
-- examples/schema.sql; the passwords come from psql variables, never from this file:
--   psql -v worker_password="$WORKER_PASSWORD" -v ops_password="$OPS_PASSWORD" \
--        -v app_password="$APP_PASSWORD" -f examples/09-least-privilege/roles.sql
--
--   shop_owner          owns the tables; the deploy job (migrations, then `apply`) logs in as
--                       a member of it: CREATE ROLE deploy LOGIN IN ROLE shop_owner
--   shop_app            the application: writes orders, may enqueue jobs, reads no outbox
--   shop_observers      the worker's login: observers_worker + SELECT on the observed table
--   ops_alice           an operator: status, dead letters, replay (observers_admin)

CREATE ROLE shop_owner NOLOGIN;
ALTER TABLE public.customers OWNER TO shop_owner;
ALTER TABLE public.orders    OWNER TO shop_owner;
ALTER TABLE public.shipments OWNER TO shop_owner;
ALTER SEQUENCE public.orders_id_seq    OWNER TO shop_owner;
ALTER SEQUENCE public.shipments_id_seq OWNER TO shop_owner;
-- the owner creates the observers of its tables (`fraiseql-observers apply` in the deploy job)
GRANT observers_admin TO shop_owner;

CREATE ROLE shop_app LOGIN PASSWORD :'app_password';
GRANT USAGE ON SCHEMA public TO shop_app;
GRANT SELECT, INSERT, UPDATE ON public.orders, public.customers, public.shipments TO shop_app;
GRANT USAGE ON SEQUENCE public.orders_id_seq, public.shipments_id_seq TO shop_app;
GRANT observers_enqueue TO shop_app;                 -- observers.job_enqueue() only

CREATE ROLE shop_observers LOGIN PASSWORD :'worker_password' IN ROLE observers_worker;
GRANT USAGE ON SCHEMA public TO shop_observers;
GRANT SELECT ON public.orders TO shop_observers;      -- `apply` checks the table it observes

CREATE ROLE ops_alice LOGIN PASSWORD :'ops_password' IN ROLE observers_admin;
