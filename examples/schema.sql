-- The application schema every example observes: a small shop. Run it once, as the
-- application's owner, before `fraiseql-observers apply` (migrations -> apply -> application ->
-- workers; docs/CONFIGURATION_EXAMPLES.md). `make test` loads it into a fresh database for each
-- example (tests/tests/e2e/examples.rs).
CREATE EXTENSION IF NOT EXISTS pg_observers;

CREATE TABLE IF NOT EXISTS public.customers (
  id    bigint PRIMARY KEY,
  name  text   NOT NULL,
  email text   NOT NULL,
  tier  text   NOT NULL DEFAULT 'standard'
);

CREATE TABLE IF NOT EXISTS public.orders (
  id          bigserial     PRIMARY KEY,
  customer_id bigint        NOT NULL REFERENCES public.customers (id),
  total       numeric(10,2) NOT NULL,
  status      text          NOT NULL DEFAULT 'new',
  note        text
);

CREATE TABLE IF NOT EXISTS public.shipments (
  id       bigserial PRIMARY KEY,
  order_id bigint    NOT NULL REFERENCES public.orders (id),
  carrier  text      NOT NULL,
  state    text      NOT NULL DEFAULT 'label_created'
);
