-- Deduplication state (postgres backend): claim / confirm / release, claim expiry, done
-- expiry, a second worker, the worker role's rights, and maintain() dropping expired days.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

-- one installation id, a UUID
SELECT count(*) AS rows, bool_and(id IS NOT NULL) AS has_id FROM observers.installation;

CREATE FUNCTION k(n int) RETURNS bytea LANGUAGE sql IMMUTABLE
    AS $$ SELECT sha256(convert_to('pair-' || n, 'UTF8')) $$;
CREATE FUNCTION today() RETURNS date LANGUAGE sql STABLE
    AS $$ SELECT (now() AT TIME ZONE 'UTC')::date $$;
CREATE FUNCTION claim(ks int[], owner text, claim_ttl interval DEFAULT '1 minute')
RETURNS TABLE (pair int, state text) LANGUAGE sql AS $$
    SELECT n, c.state
      FROM unnest(ks) AS n
      JOIN observers.dedup_claim((SELECT array_agg(k(x) ORDER BY x) FROM unnest(ks) AS x),
                                 (SELECT array_agg(today()) FROM unnest(ks)),
                                 owner, claim_ttl, '1 hour') AS c ON c.key = k(n)
     ORDER BY n
$$;

-- w1 claims 1..3; w2 finds them busy
SELECT * FROM claim('{1,2,3}', 'w1');
SELECT * FROM claim('{1,2,3,4}', 'w2');
-- the same owner claims its own pair again (a retry after its task was aborted)
SELECT * FROM claim('{1}', 'w1');
-- a key twice in one call is claimed once
SELECT count(*) AS rows FROM observers.dedup_claim(ARRAY[k(9), k(9)], ARRAY[today(), today()], 'w1', '1 minute', '1 hour');

-- 1 succeeded, 2 failed (released); w2 now: 1 done, 2 claimed, 3 still busy
SELECT observers.dedup_confirm(ARRAY[k(1)], ARRAY[today()], '1 hour');
SELECT observers.dedup_release(ARRAY[k(2)], ARRAY[today()], 'w1');
-- releasing someone else's claim does nothing
SELECT observers.dedup_release(ARRAY[k(3)], ARRAY[today()], 'w2');
SELECT * FROM claim('{1,2,3}', 'w2');

-- an expired claim (the worker died mid-attempt) can be taken over
SELECT * FROM claim('{5}', 'w1', '1 millisecond');
SELECT pg_sleep(0.02);
SELECT * FROM claim('{5}', 'w2');

-- an expired done-mark no longer suppresses
SELECT observers.dedup_confirm(ARRAY[k(6)], ARRAY[today()], '1 millisecond');
SELECT pg_sleep(0.02);
SELECT * FROM claim('{6}', 'w1');

-- dedup_done: which keys are done and in force; NULL keys: whether any done-mark is in force
SELECT (SELECT count(*) FROM observers.dedup_done(NULL, NULL)) AS any_done;
SELECT n FROM unnest('{1,2,3,6}'::int[]) AS n
 WHERE k(n) IN (SELECT key FROM observers.dedup_done(ARRAY[k(1), k(2), k(3), k(6)],
                                                      ARRAY[today(), today(), today(), today()]));

-- rows live in the partition of their day
SELECT tableoid::regclass::text = 'observers.dedup_p' || to_char(today(), 'YYYYMMDD') AS in_todays_partition,
       count(*)
  FROM observers.dedup GROUP BY 1;

-- maintain(): a past day whose rows all expired is dropped; one with a live row is kept
SET client_min_messages = warning;
SELECT observers.dedup_confirm(ARRAY[k(20)], ARRAY[today() - 1], '1 millisecond');
SELECT observers.dedup_confirm(ARRAY[k(21)], ARRAY[today() - 1], '1 millisecond');
CREATE TABLE observers.dedup_p20000101 PARTITION OF observers.dedup FOR VALUES FROM ('2000-01-01') TO ('2000-01-02');
CREATE TABLE observers.dedup_p20000102 PARTITION OF observers.dedup FOR VALUES FROM ('2000-01-02') TO ('2000-01-03');
SELECT observers.dedup_confirm(ARRAY[k(30)], ARRAY['2000-01-01'::date], '1 millisecond');
SELECT observers.dedup_confirm(ARRAY[k(31)], ARRAY['2000-01-02'::date], '1 hour');
RESET client_min_messages;
SELECT pg_sleep(0.02);
SELECT regexp_replace(observers.maintain(), '^.*; (dedup: .*)$', '\1') AS dedup_summary;
SELECT to_regclass('observers.dedup_p20000101') IS NULL AS expired_day_dropped,
       to_regclass('observers.dedup_p20000102') IS NOT NULL AS live_day_kept,
       to_regclass('observers.dedup_p' || to_char(today() - 1, 'YYYYMMDD')) IS NOT NULL AS yesterday_kept;

-- the worker role may call the functions but not write the table directly
CREATE ROLE dedup_worker_test LOGIN IN ROLE observers_worker;
SET ROLE dedup_worker_test;
SELECT count(*) AS claimed FROM observers.dedup_claim(ARRAY[k(40)], ARRAY[today()], 'w3', '1 minute', '1 hour');
SELECT count(*) FROM observers.installation;
DELETE FROM observers.dedup;
RESET ROLE;
-- an ordinary role may not even call them
CREATE ROLE dedup_nobody LOGIN;
SET ROLE dedup_nobody;
SELECT observers.dedup_release(ARRAY[k(40)], ARRAY[today()], 'w3');
RESET ROLE;
DROP ROLE dedup_worker_test;
DROP ROLE dedup_nobody;
