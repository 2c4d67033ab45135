-- Event ids (capture/ids.rs): from a counter in shared memory that reserves blocks of
-- observers.event_id_seq. scripts/test.sh runs this on a server with
-- shared_preload_libraries = 'pg_observers' (the counter's space reserved at start-up) and
-- scripts/test-sql-timeless.sh on servers without it (the counter made by the first backend
-- that draws an id): the expected output is the same for both.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;

CREATE TABLE ids (id int PRIMARY KEY, note text);
SELECT name FROM observers.create_observer('ids', 'ids', '{INSERT,UPDATE,DELETE}');
GRANT ALL ON ids TO PUBLIC;
-- nothing handed out yet
SELECT observers._event_id_high() AS high_before_any_event;

-- ids grow in the order they are drawn, across sessions: two sessions take turns
SELECT dblink_connect('other',
         format('host=%s port=%s dbname=%s user=%s',
                coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
                current_setting('port'), current_database(), current_user));
SELECT format('INSERT INTO ids VALUES (%s, ''here'')', g),
       format('SELECT dblink_exec(''other'', ''INSERT INTO ids VALUES (%s, ''''there'''')'')', g + 1)
  FROM generate_series(1, 40, 2) AS g \gexec
SELECT count(*) AS events,
       bool_and(prev IS NULL OR prev < id) AS ids_grow_in_the_order_written
  FROM (SELECT e.id, lag(e.id) OVER (ORDER BY (e.new ->> 'id')::int) AS prev
          FROM observers.event AS e) AS s;

-- with or without the preload, the ids come from one counter in shared memory
SELECT count(*) AS counters_in_shared_memory FROM pg_shmem_allocations WHERE name = 'pg_observers event ids v2';

-- the high mark is the last id handed out: a floor read now is below every later id
SELECT observers._event_id_high() = (SELECT max(id) FROM observers.event) AS high_is_the_last_id;
CREATE TEMP TABLE mark AS SELECT observers._event_id_high() AS high;

-- a statement of 3,000 rows (more than one block of shared ids): distinct ids, in row order,
-- all above the mark; then an UPDATE and a DELETE of the same rows
INSERT INTO ids SELECT g, 'bulk' FROM generate_series(100, 3099) AS g;
UPDATE ids SET note = 'bulk2' WHERE id >= 100;
DELETE FROM ids WHERE id >= 100;
SELECT e.op, count(*) AS events, count(DISTINCT e.id) AS distinct_ids,
       min(e.id) > (SELECT high FROM mark) AS above_the_mark,
       bool_and(s.prev IS NULL OR s.prev < e.id) AS in_row_order
  FROM observers.event AS e
  JOIN (SELECT id, lag(id) OVER (PARTITION BY op ORDER BY (coalesce(new, old) ->> 'id')::int) AS prev
          FROM observers.event) AS s ON s.id = e.id
 WHERE e.id > (SELECT high FROM mark)
 GROUP BY e.op ORDER BY e.op;
SELECT observers._event_id_high() = (SELECT max(id) FROM observers.event) AS high_is_the_last_id;

-- the column default draws from the same counter (the SPI path of conditions inserts with it)
SELECT name FROM observers.create_observer('ids_cond', 'ids', '{INSERT}', condition => 'NEW.note = ''spi''');
INSERT INTO ids VALUES (5000, 'spi');
INSERT INTO observers.event (observer_id, op, new) VALUES (0, 'INSERT', '{"by": "hand"}') RETURNING id = observers._event_id_high() AS default_takes_the_next_id;
SELECT count(*) AS all_events, count(DISTINCT id) AS distinct_ids FROM observers.event;

-- the sequence is never below an id handed out: after a restart ids continue above it
SELECT (SELECT last_value FROM observers.event_id_seq) >= (SELECT max(id) FROM observers.event)
       AS sequence_at_or_above_every_id;

-- the capture role (conditions run as it) may draw ids but not move the sequence back
SET ROLE observers_capture;
SELECT setval('observers.event_id_seq', 1);
RESET ROLE;

SELECT dblink_disconnect('other');
SELECT observers.drop_observer('ids'), observers.drop_observer('ids_cond');
DROP TABLE ids;
