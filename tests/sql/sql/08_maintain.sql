-- Partition maintenance: creation ahead, retention (only what every group passed), the
-- DEFAULT partition, idempotence.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
RESET client_min_messages;

-- maintain() with partition names (they contain dates) masked
CREATE FUNCTION m() RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(observers.maintain(), 'event_p\d{8}', 'event_pYYYYMMDD', 'g')
$$;
CREATE VIEW parts AS
SELECT count(*) FILTER (WHERE c.relname ~ '^event_p\d{8}$') AS daily,
       count(*) FILTER (WHERE c.relname = 'event_default') AS default_partition,
       bool_and(observers._is_extension_member(c.oid)) AS all_members
  FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'observers.event'::regclass;
-- drop the partition of today + p_offset days (first taking it out of the extension)
CREATE FUNCTION drop_day_partition(p_offset int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_rel text := 'observers.' || observers._partition_name((now() AT TIME ZONE 'UTC')::date + p_offset);
BEGIN
    EXECUTE format('ALTER EXTENSION pg_observers DROP TABLE %s', v_rel);
    EXECUTE format('DROP TABLE %s', v_rel);
END
$$;

-- idempotent: everything exists already
SELECT m();
SELECT m();
SELECT * FROM parts;

-- a missing partition ahead is created again (and becomes a member of the extension)
SELECT drop_day_partition(3);
SELECT * FROM parts;
SELECT m();
SELECT * FROM parts;

-- rows of a day without partition land in the DEFAULT partition; that day's partition cannot
-- be created any more: reported, not an error
SELECT drop_day_partition(7);
INSERT INTO observers.event (observer_id, op, new, captured_at)
VALUES (1, 'INSERT', '{}', (now() AT TIME ZONE 'UTC')::date + 7 + time '12:00' AT TIME ZONE 'UTC');
SELECT count(*) AS in_default FROM observers.event_default;
SELECT m();
SELECT m();
SELECT * FROM parts;

-- retention: old partitions are dropped only when every group with observers has passed them
SET observers.retention = '2 days';
CREATE TABLE observers.event_p20200101 PARTITION OF observers.event
    FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00');
CREATE TABLE observers.event_p20200102 PARTITION OF observers.event
    FOR VALUES FROM ('2020-01-02 00:00:00+00') TO ('2020-01-03 00:00:00+00');
INSERT INTO observers.event (observer_id, op, new, captured_at)
VALUES (1, 'INSERT', '{}', '2020-01-01 12:00:00+00');
-- old rows in the DEFAULT partition (a day that never had a partition)
INSERT INTO observers.event (observer_id, op, new, captured_at)
VALUES (1, 'INSERT', '{}', '2020-01-05 12:00:00+00');

-- no observers at all: nothing can still need these events
SELECT m();
SELECT relname FROM pg_class WHERE relname LIKE 'event_p2020%' ORDER BY 1;
SELECT count(*) AS old_rows_in_default FROM observers.event_default WHERE captured_at < '2021-01-01';

CREATE TABLE observers.event_p20200101 PARTITION OF observers.event
    FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00');
INSERT INTO observers.event (observer_id, op, new, captured_at)
VALUES (1, 'INSERT', '{}', '2020-01-01 12:00:00+00');
CREATE TABLE t (id int);
SELECT name FROM observers.create_observer('o1', 't', group_name => 'g1');
SELECT name FROM observers.create_observer('o2', 't', group_name => 'g2');
-- groups with observers but no checkpoint have passed nothing
SELECT m();
-- g1 passed everything, g2 not yet
SELECT observers.lease_acquire('g1', 'w', '1 hour');
SELECT last_id FROM observers.batch_open('g1', 1);
SELECT observers.batch_close('g1', 1);
SELECT m();
-- g2's cursor is still before the event
INSERT INTO observers.checkpoint (group_name, snap_lo) VALUES ('g2', '1:1:');
SELECT m();
-- g2 passed it too
SELECT observers.lease_acquire('g2', 'w', '1 hour');
SELECT last_id FROM observers.batch_open('g2', 1);
SELECT observers.batch_close('g2', 1);
SELECT m();
SELECT relname FROM pg_class WHERE relname LIKE 'event_p2020%' ORDER BY 1;
-- recent partitions are kept whatever the cursors say
SELECT * FROM parts;

-- a bad retention setting is reported by maintain(); only superusers may set it
SET observers.retention = 'forever';
SELECT m();
SET observers.retention = '-1 day';
SELECT m();
RESET observers.retention;
SELECT m();

-- (maintain() under lock contention: 18_maintain_locks)


DROP TABLE t;
DROP VIEW parts;
DROP FUNCTION m();
DROP FUNCTION drop_day_partition(int);
