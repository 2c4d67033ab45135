-- The trust boundary (docs/SECURITY.md): what a role that may create observers can reach.
--   1. conditions are pure predicates over NEW/OLD: no function that is not IMMUTABLE, no
--      subquery, no parameter; and capture rolls back whatever setting a (lying) function changed
--   2. row-level security: only a role that sees every row may observe the table
--   4. conditions run with the rights of observers_capture, which holds nothing
--   7. a column named "new" or "old" does not replace the row in the payload
--   9. UPDATE through an inheritance parent captures the children's rows
--  13. the payload does not depend on the writer's session settings
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
DROP ROLE IF EXISTS regress_tb_worker;
DROP ROLE IF EXISTS regress_tb_owner;
DROP ROLE IF EXISTS regress_tb_bypass;
DROP ROLE IF EXISTS regress_tb_app;
RESET client_min_messages;

CREATE ROLE regress_tb_worker IN ROLE observers_worker;
CREATE ROLE regress_tb_owner IN ROLE observers_admin;
CREATE ROLE regress_tb_bypass BYPASSRLS IN ROLE observers_admin;
CREATE ROLE regress_tb_app;
CREATE SCHEMA tb;
GRANT USAGE ON SCHEMA tb TO regress_tb_worker, regress_tb_owner, regress_tb_bypass, regress_tb_app;
-- conditions may use what PUBLIC may use (they run as observers_capture)
GRANT USAGE ON SCHEMA tb TO PUBLIC;
CREATE SCHEMA tb_private;
CREATE FUNCTION tb_private.f(int) RETURNS boolean IMMUTABLE LANGUAGE sql AS 'SELECT $1 > 0';
GRANT USAGE ON SCHEMA tb_private TO regress_tb_worker;
CREATE SEQUENCE tb.s;
CREATE TABLE tb.orders (id int PRIMARY KEY, total numeric, email text, status text, data jsonb,
                        at timestamptz);
GRANT SELECT ON tb.orders TO regress_tb_worker;
GRANT ALL ON tb.orders TO regress_tb_app;

-- 1. The escalation of the issue: a worker-role member with SELECT on a table tries to make
-- every writer's session run its temp-schema functions. Refused at creation.
SET ROLE regress_tb_worker;
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}',
    condition => $$pg_catalog.set_config('search_path', 'pg_temp_9, pg_catalog, public', false) IS NOT NULL$$);
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}',
    condition => $$set_config('standard_conforming_strings', 'off', false) <> ''$$);
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}',
    condition => $$pg_notify('x', NEW.email) IS NULL$$);
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}',
    condition => $$current_setting('application_name') = 'x'$$);
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}', condition => 'NEW.at > now()');
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}', condition => 'NEW.at::date = DATE ''2020-01-01''');
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}', condition => 'CURRENT_USER = ''postgres''');
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}', condition => 'nextval(''tb.s'') > 0');
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}',
    condition => 'NEW.id IN (SELECT id FROM tb.orders)');
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}',
    condition => 'EXISTS (SELECT 1 FROM pg_catalog.pg_authid)');
SELECT observers.create_observer('evil', 'tb.orders', '{INSERT}', condition => '$1 IS NOT NULL');
SELECT observers.create_observer('evil', 'tb.orders', '{UPDATE}', condition => '($4)[1] = ''id''');
-- pure predicates are fine
SELECT name, condition FROM observers.create_observer('pure', 'tb.orders', '{INSERT,UPDATE}',
    condition => $$NEW.total > 1000 AND lower(NEW.email) LIKE '%@example.com'
                   AND NEW.status IN ('paid', 'shipped') AND NEW.data ->> 'kind' = 'b2b'
                   AND NEW.at > TIMESTAMPTZ '2020-01-01 00:00:00+00'$$);
RESET ROLE;
SELECT count(*) AS observers FROM observers.observer;

-- A user function that lies about its volatility is accepted (PostgreSQL does not check), but
-- whatever it changes in the writer's session is rolled back before the trigger returns.
CREATE FUNCTION tb.liar(int) RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_temp_9, pg_catalog, public', false);
    PERFORM pg_catalog.set_config('standard_conforming_strings', 'off', false);
    PERFORM pg_catalog.set_config('bytea_output', 'escape', false);
    PERFORM pg_catalog.set_config('TimeZone', 'Asia/Kolkata', true);
    RETURN true;
END
$$;
SELECT name FROM observers.create_observer('liar_ins', 'tb.orders', '{INSERT}', condition => 'tb.liar(NEW.id)');
SELECT name FROM observers.create_observer('liar_upd', 'tb.orders', '{UPDATE}', condition => 'tb.liar(NEW.id)');
-- creating it did not change the creator's session either (the probe may fold the condition)
SELECT current_setting('standard_conforming_strings') AS scs, current_setting('bytea_output') AS bytea_output;
SET ROLE regress_tb_app;
SET search_path = tb, public;
SET bytea_output = hex;
SET TimeZone = 'UTC';
INSERT INTO tb.orders (id, total) VALUES (1, 5);
UPDATE tb.orders SET total = 6 WHERE id = 1;
SELECT current_setting('search_path') AS search_path,
       current_setting('standard_conforming_strings') AS scs,
       current_setting('bytea_output') AS bytea_output,
       current_setting('TimeZone') AS timezone;
-- inside an explicit transaction and after a savepoint too
BEGIN;
INSERT INTO tb.orders (id, total) VALUES (2, 5);
SAVEPOINT s;
INSERT INTO tb.orders (id, total) VALUES (3, 5);
RELEASE s;
SELECT current_setting('search_path') AS search_path,
       current_setting('standard_conforming_strings') AS scs;
COMMIT;
RESET search_path;
RESET bytea_output;
RESET TimeZone;
RESET ROLE;
SELECT o.name, e.op, e.new ->> 'id' AS id
  FROM observers.event AS e JOIN observers.observer AS o ON o.id = e.observer_id ORDER BY e.id;
SELECT observers.drop_observer('liar_ins'), observers.drop_observer('liar_upd');

-- 4. observers_capture holds nothing: a condition cannot read what its creator cannot read,
-- even through a function that claims to be IMMUTABLE (it runs as observers_capture, which has
-- no SELECT on tb.payroll): the write that would evaluate it fails instead of leaking a bit.
CREATE TABLE tb.payroll (id int, salary int);
INSERT INTO tb.payroll VALUES (1, 100000);
CREATE FUNCTION tb.salary_of(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT salary FROM tb.payroll WHERE id = $1';
SET ROLE regress_tb_worker;
SELECT name FROM observers.create_observer('exfil', 'tb.orders', '{INSERT}', condition => 'tb.salary_of(NEW.id) > 50000');
RESET ROLE;
INSERT INTO tb.orders (id) VALUES (1000);
SELECT observers.drop_observer('exfil');
-- what observers_capture cannot use is reported at creation, with a hint that says not to grant it
SET ROLE regress_tb_worker;
SELECT observers.create_observer('private', 'tb.orders', '{INSERT}', condition => 'tb_private.f(NEW.id)');
RESET ROLE;
SELECT count(*) AS capture_privileges
  FROM information_schema.role_table_grants
 WHERE grantee = 'observers_capture' AND table_schema <> 'observers';

-- 2. Row-level security: a role that sees 0 rows cannot observe the table ...
CREATE TABLE tb.secrets (id int PRIMARY KEY, owner text, secret text);
ALTER TABLE tb.secrets OWNER TO regress_tb_owner;
ALTER TABLE tb.secrets ENABLE ROW LEVEL SECURITY;
CREATE POLICY own ON tb.secrets USING (owner = current_user);
GRANT SELECT ON tb.secrets TO regress_tb_worker;
INSERT INTO tb.secrets VALUES (1, 'someone', 'the secret');
SET ROLE regress_tb_worker;
SELECT count(*) AS visible FROM tb.secrets;
SELECT observers.create_observer('rls_leak', 'tb.secrets', group_name => 'mine');
RESET ROLE;
-- ... the owner (not forced), a BYPASSRLS role and a superuser can
SET ROLE regress_tb_owner;
SELECT name FROM observers.create_observer('rls_owner', 'tb.secrets');
RESET ROLE;
GRANT SELECT ON tb.secrets TO regress_tb_bypass;
SET ROLE regress_tb_bypass;
SELECT name FROM observers.create_observer('rls_bypass', 'tb.secrets');
RESET ROLE;
SELECT name FROM observers.create_observer('rls_super', 'tb.secrets');
-- with FORCE ROW LEVEL SECURITY the owner is subject to the policies too
ALTER TABLE tb.secrets FORCE ROW LEVEL SECURITY;
SET ROLE regress_tb_owner;
SELECT observers.create_observer('rls_forced', 'tb.secrets');
RESET ROLE;
SELECT name FROM observers.observer WHERE name LIKE 'rls%' ORDER BY 1;
-- row-level security enabled on a table after a role that does not bypass it observed it: the
-- DDL warns, status() reports it as an error for that observer only
CREATE TABLE tb.notes (id int PRIMARY KEY, owner text, body text);
ALTER TABLE tb.notes OWNER TO regress_tb_owner;
GRANT SELECT ON tb.notes TO regress_tb_worker;
SET ROLE regress_tb_worker;
SELECT name, created_by FROM observers.create_observer('notes_worker', 'tb.notes');
RESET ROLE;
SET ROLE regress_tb_owner;
SELECT name, created_by FROM observers.create_observer('notes_owner', 'tb.notes');
ALTER TABLE tb.notes ENABLE ROW LEVEL SECURITY;
RESET ROLE;
SELECT observer, capture_error FROM observers.status() WHERE observer LIKE 'notes%' ORDER BY 1;

-- 7. A column named "new" (or "old") is a column, not the row.
CREATE TABLE tb.nn2 (new int, old int);
SELECT name FROM observers.create_observer('nn2', 'tb.nn2', '{INSERT}', condition => 'NEW.new > 0');
SELECT name FROM observers.create_observer('nn2_del', 'tb.nn2', '{DELETE}', condition => 'OLD.old > 0');
SELECT name FROM observers.create_observer('nn2_plain', 'tb.nn2');
INSERT INTO tb.nn2 VALUES (5, 7);
DELETE FROM tb.nn2;
SELECT o.name, e.op, e.new, e.old
  FROM observers.event AS e JOIN observers.observer AS o ON o.id = e.observer_id
 WHERE o.name LIKE 'nn2%' ORDER BY e.id;

-- 9. Inheritance: the observer covers the parent and its children, wherever the statement is
-- addressed (UPDATE through the parent of a child's row fires only the child's row triggers).
CREATE TABLE tb.animal (id int, name text);
CREATE TABLE tb.dog (good boolean) INHERITS (tb.animal);
CREATE TABLE tb.puppy () INHERITS (tb.dog);
SELECT name FROM observers.create_observer('animals', 'tb.animal');
SELECT tgrelid::regclass AS rel, tgname, tgtype FROM pg_trigger
 WHERE tgname LIKE E'observers\\_%' AND tgrelid IN ('tb.animal'::regclass, 'tb.dog'::regclass, 'tb.puppy'::regclass)
 ORDER BY 1, 2;
INSERT INTO tb.animal VALUES (1, 'cat');
INSERT INTO tb.dog VALUES (2, 'rex', true);
INSERT INTO tb.puppy VALUES (3, 'bit', true);
UPDATE tb.animal SET name = upper(name);
DELETE FROM tb.animal WHERE id = 3;
SELECT e.op, coalesce(e.new, e.old) ->> 'id' AS id, e.new ->> 'name' AS name
  FROM observers.event AS e JOIN observers.observer AS o ON o.id = e.observer_id
 WHERE o.name = 'animals' ORDER BY e.id;
-- a child attached later has no trigger yet: status() says so, repair_observer() installs it
CREATE TABLE tb.kitten (fluffy boolean) INHERITS (tb.animal);
SELECT capture_error FROM observers.status() WHERE observer = 'animals';
SELECT * FROM observers.repair('animals');   -- the short name of repair_observer
SELECT capture_error FROM observers.status() WHERE observer = 'animals';
INSERT INTO tb.kitten VALUES (4, 'tom', true);
UPDATE tb.animal SET name = lower(name) WHERE id = 4;
SELECT e.op, e.new ->> 'id' AS id, e.new ->> 'name' AS name
  FROM observers.event AS e JOIN observers.observer AS o ON o.id = e.observer_id
 WHERE o.name = 'animals' AND e.new ->> 'id' = '4' ORDER BY e.id;
SELECT observers.disable_observer('animals'), observers.enable_observer('animals');
SELECT count(*) FILTER (WHERE tgenabled = 'O') AS enabled_triggers
  FROM pg_trigger WHERE tgname LIKE E'observers\\_%' AND tgrelid IN ('tb.animal'::regclass, 'tb.dog'::regclass, 'tb.puppy'::regclass, 'tb.kitten'::regclass);
SELECT observers.drop_observer('animals');
SELECT count(*) AS triggers_left FROM pg_trigger
 WHERE tgname LIKE E'observers\\_%' AND tgrelid IN ('tb.animal'::regclass, 'tb.dog'::regclass, 'tb.puppy'::regclass, 'tb.kitten'::regclass);

-- 13. The payload does not depend on the writer's session: the same row written from a session
-- with the defaults and from one with every format setting changed gives the same payload,
-- with and without a condition (two capture paths), and the writer's settings are intact.
CREATE TABLE tb.fmt (k int, b bytea, i interval, ts timestamptz, f float8, r tstzrange, d date);
SELECT name FROM observers.create_observer('fmt_direct', 'tb.fmt');
SELECT name FROM observers.create_observer('fmt_cond', 'tb.fmt', '{INSERT,UPDATE}', condition => 'NEW.k > 0');
INSERT INTO tb.fmt VALUES (1, '\x00ff', '1 year 2 mons 3 days 04:05:06', '2024-02-29 10:00:00.5+00',
                           0.1::float8 + 0.2::float8, '[2024-01-01 00:00+00,2024-01-02 00:00+00)', '2024-02-29');
SET bytea_output = escape;
SET IntervalStyle = iso_8601;
SET TimeZone = 'Asia/Kolkata';
SET DateStyle = 'SQL, DMY';
SET extra_float_digits = 0;
INSERT INTO tb.fmt VALUES (2, '\x00ff', '1 year 2 mons 3 days 04:05:06', '2024-02-29 10:00:00.5+00',
                           0.1::float8 + 0.2::float8, '[2024-01-01 00:00+00,2024-01-02 00:00+00)', '2024-02-29');
UPDATE tb.fmt SET k = k + 10;
SELECT current_setting('bytea_output') AS bytea_output, current_setting('IntervalStyle') AS intervalstyle,
       current_setting('TimeZone') AS timezone, current_setting('DateStyle') AS datestyle,
       current_setting('extra_float_digits') AS extra_float_digits;
-- the session's own output is still in its formats
SELECT b, i, ts FROM tb.fmt WHERE k = 12;
RESET bytea_output;
RESET IntervalStyle;
RESET TimeZone;
RESET DateStyle;
RESET extra_float_digits;
SELECT o.name, e.op, (e.new - 'k') AS payload
  FROM observers.event AS e JOIN observers.observer AS o ON o.id = e.observer_id
 WHERE o.name LIKE 'fmt%' AND e.op = 'INSERT' ORDER BY e.id;
SELECT count(DISTINCT (e.new - 'k')) AS distinct_inserted_payloads,
       count(DISTINCT (e.old - 'k')) FILTER (WHERE e.op = 'UPDATE') AS distinct_old_payloads,
       bool_and(e.changed = '{k}') FILTER (WHERE e.op = 'UPDATE') AS only_k_changed
  FROM observers.event AS e JOIN observers.observer AS o ON o.id = e.observer_id
 WHERE o.name LIKE 'fmt%';

-- 8. capture() is not declared SECURITY DEFINER: it switches to its owner, observers_capture, in
-- code (capture/session.rs). A condition runs as observers_capture (only then is this row
-- captured), and the writer's next statement runs as the writer again ...
CREATE FUNCTION tb.runs_as_capture(int) RETURNS boolean IMMUTABLE LANGUAGE plpgsql
    AS $$ BEGIN RETURN current_user = 'observers_capture'; END $$;
SET ROLE regress_tb_worker;
SELECT name FROM observers.create_observer('whoami', 'tb.orders', '{INSERT}', condition => 'tb.runs_as_capture(NEW.id)');
RESET ROLE;
INSERT INTO tb.orders (id) VALUES (2000);
SELECT current_user;
SELECT o.name, e.new ->> 'id' AS id
  FROM observers.event AS e JOIN observers.observer AS o ON o.id = e.observer_id
 WHERE o.name = 'whoami';
-- ... also after a capture that failed inside a subtransaction (a PL/pgSQL exception block):
-- with EXECUTE revoked from PUBLIC, observers_capture may no longer call the condition's
-- function (the superuser writing could)
REVOKE EXECUTE ON FUNCTION tb.runs_as_capture(int) FROM PUBLIC;
DO $$
BEGIN
    INSERT INTO tb.orders (id) VALUES (2001);
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'capture failed: %; current_user is now %',
        regexp_replace(SQLERRM, '\(id \d+\)', '(id N)'), current_user;
END $$;
SELECT current_user;
SELECT observers.drop_observer('whoami');

-- 14. observers.verify_tuples (compare every outbox row with heap_form_tuple's) is a superuser
-- setting: an application role can neither turn it on (to slow capture) nor off.
SET ROLE regress_tb_app;
SET observers.verify_tuples = on;
SET observers.verify_tuples = off;
RESET ROLE;

DROP SCHEMA tb CASCADE;
DROP SCHEMA tb_private CASCADE;
DROP ROLE regress_tb_worker;
DROP ROLE regress_tb_owner;
DROP ROLE regress_tb_bypass;
DROP ROLE regress_tb_app;
