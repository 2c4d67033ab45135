-- The searchable audit trail (issue 12, docs/SEARCH.md): observers.search_index() copies every
-- captured event (all observers, all groups, delivered or not) into observers.search_doc off the
-- write path, following a feed cursor of its own (no gaps: a transaction that commits late is
-- indexed by a later call); observers.search() finds events by text, table, observer, op, time
-- and named fields, newest first, paged; search_facets() and search_timeseries() count them;
-- search_add_field() gives a field an index; maintain() keeps the outbox a feed has not passed.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_observers CASCADE;
CREATE EXTENSION pg_observers;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;

CREATE OR REPLACE FUNCTION try(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p_sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, customer_id int, status text, note text);
CREATE TABLE public.customers (id int PRIMARY KEY, name text);
SELECT name FROM observers.create_observer('orders', 'shop.orders', group_name => 'g1');
SELECT name FROM observers.create_observer('paid_orders', 'shop.orders', events => '{UPDATE}',
    condition => $$NEW.status = 'paid'$$, group_name => 'g2');
SELECT name FROM observers.create_observer('customers', 'public.customers');

-- nothing captured yet: nothing to index; the feed exists from the first call
SELECT observers.search_index();
SELECT feed, batch_open, last_id, max_id, passed FROM observers.feed_status();

INSERT INTO shop.orders VALUES (1, 42, 'new', 'customer asked for a refund'),
                               (2, 42, 'new', 'gift wrap'),
                               (3, 7, 'new', 'express delivery');
UPDATE shop.orders SET status = 'paid' WHERE id IN (1, 3);     -- orders x2, paid_orders x2
DELETE FROM shop.orders WHERE id = 2;
INSERT INTO public.customers VALUES (42, 'Ada Lovelace'), (7, 'Refund Department');
-- a rolled-back change has no event and nothing to index
BEGIN;
INSERT INTO shop.orders VALUES (99, 1, 'new', 'refund rolled back');
ROLLBACK;
SELECT count(*) AS events_in_outbox FROM observers.event;

-- the index is filled by calls, in pages (lim), never by the capture trigger
SELECT count(*) AS docs_before_indexing FROM observers.search_doc;
SELECT observers.search_index(4) AS page1, observers.search_index(4) AS page2;
SELECT observers.search_index(4) AS page3, observers.search_index(4) AS page4;
SELECT count(*) AS docs, count(DISTINCT event_id) AS distinct_events,
       (SELECT array_agg(id ORDER BY id) FROM observers.event) =
       (SELECT array_agg(event_id ORDER BY event_id) FROM observers.search_doc) AS same_ids
  FROM observers.search_doc;
SELECT feed, batch_open, passed, backlog FROM observers.feed_status();

-- full text over the payload's values (websearch syntax), newest first
SELECT event_id, observer_name, table_label, operation, new ->> 'id' AS new_id, old ->> 'id' AS old_id
  FROM observers.search('refund');
SELECT event_id, operation FROM observers.search('refund -department');    -- "-" excludes a word
SELECT event_id, operation FROM observers.search('"express delivery"');
SELECT count(*) AS nothing FROM observers.search('nosuchword');
-- filters: table (a bare name means public.), observer, op, named fields
SELECT event_id, table_label FROM observers.search(table_name => 'customers');
SELECT event_id, observer_name, operation FROM observers.search(table_name => 'shop.orders', op => 'update');
SELECT event_id FROM observers.search(observer => 'paid_orders');
SELECT event_id, operation FROM observers.search(fields => '{"new.customer_id": 42}');
SELECT event_id, operation FROM observers.search(fields => '{"new.customer_id": 42, "new.status": "paid"}');
SELECT event_id, operation FROM observers.search(fields => '{"old.status": "new", "new.status": "paid"}');
SELECT event_id, operation FROM observers.search(fields => '{"new.id": null}', table_name => 'shop.orders');
SELECT event_id FROM observers.search('refund', fields => '{"new.customer_id": 42}');
-- time range: all captured before now (statement time), none after
SELECT count(*) AS before_now FROM observers.search(until => now() + interval '1 second');
SELECT count(*) AS since_tomorrow FROM observers.search(since => now() + interval '1 day');
-- the changed columns of an UPDATE come along
SELECT event_id, changed FROM observers.search(op => 'UPDATE', observer => 'orders');

-- paging: four pages of 3, 3, 3 and 1 rows, no overlap, no gap, newest first
CREATE TEMP TABLE pages AS SELECT 1 AS page, * FROM observers.search(lim => 3);
INSERT INTO pages SELECT 2, s.* FROM (SELECT captured_at, event_id FROM pages WHERE page = 1
                                       ORDER BY captured_at, event_id LIMIT 1) AS l,
                                      observers.search(lim => 3, before_at => l.captured_at, before_id => l.event_id) AS s;
INSERT INTO pages SELECT 3, s.* FROM (SELECT captured_at, event_id FROM pages WHERE page = 2
                                       ORDER BY captured_at, event_id LIMIT 1) AS l,
                                      observers.search(lim => 3, before_at => l.captured_at, before_id => l.event_id) AS s;
INSERT INTO pages SELECT 4, s.* FROM (SELECT captured_at, event_id FROM pages WHERE page = 3
                                       ORDER BY captured_at, event_id LIMIT 1) AS l,
                                      observers.search(lim => 3, before_at => l.captured_at, before_id => l.event_id) AS s;
SELECT page, array_agg(event_id ORDER BY captured_at DESC, event_id DESC) FROM pages GROUP BY page ORDER BY page;
SELECT count(*) = count(DISTINCT event_id) AND count(*) = (SELECT count(*) FROM observers.search_doc)
       AS pages_cover_everything_once FROM pages;

-- facets and time series
SELECT * FROM observers.search_facets('table');
SELECT * FROM observers.search_facets('op');
SELECT * FROM observers.search_facets('observer', table_name => 'shop.orders');
SELECT * FROM observers.search_facets('new.status');
SELECT * FROM observers.search_facets('new.customer_id', 'refund');
SELECT sum(events) AS events,
       bool_and(bucket_start = date_trunc('day', bucket_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS utc_days
  FROM observers.search_timeseries('day');
SELECT sum(events) AS updates_per_minute_total FROM observers.search_timeseries('minute', op => 'UPDATE');
SELECT sum(events) AS per_hour_total FROM observers.search_timeseries('hour', table_name => 'customers');

-- no gaps: a transaction that captured before the indexer ran but commits after it is
-- indexed by a later call
SELECT dblink_connect('late', format('host=%s port=%s dbname=%s user=%s',
         coalesce(host(inet_server_addr()), split_part(current_setting('unix_socket_directories'), ',', 1)),
         current_setting('port'), current_database(), current_user)) AS late;
SELECT dblink_exec('late', 'BEGIN');
SELECT dblink_exec('late', $$INSERT INTO shop.orders VALUES (10, 5, 'new', 'late refund')$$);
INSERT INTO shop.orders VALUES (11, 5, 'new', 'early refund');
SELECT observers.search_index() AS indexed_while_late_is_open;
SELECT new ->> 'id' AS id FROM observers.search('refund', fields => '{"new.customer_id": 5}');
SELECT dblink_exec('late', 'COMMIT');
SELECT observers.search_index() AS indexed_after_commit;
SELECT new ->> 'id' AS id FROM observers.search('refund', fields => '{"new.customer_id": 5}');
SELECT dblink_disconnect('late');
SELECT (SELECT count(*) FROM observers.event) = (SELECT count(*) FROM observers.search_doc) AS all_indexed;
SELECT observers.search_index() AS nothing_left;

-- custom field indexes: declared once, used by filters and kept for future partitions
SELECT observers.search_add_field('new.customer_id') AS index_name;
SELECT observers.search_add_field('new.customer_id') = observers.search_add_field('new.customer_id') AS idempotent;
SELECT path, index_name FROM observers.search_field;
SELECT count(*) > 0 AS index_on_every_partition
  FROM pg_indexes WHERE schemaname = 'observers' AND indexname LIKE 'search_doc_p%' AND indexdef LIKE '%customer_id%';
SET enable_seqscan = off;
SET enable_bitmapscan = off;
CREATE TEMP TABLE plan_lines (line text);
DO $$
DECLARE r record;
BEGIN
    FOR r IN EXECUTE $q$EXPLAIN SELECT count(*) FROM observers.search_doc AS d
                        WHERE (d.doc #>> '{new,customer_id}'::text[]) = '42'$q$ LOOP
        INSERT INTO plan_lines VALUES (r."QUERY PLAN");
    END LOOP;
END $$;
SELECT bool_or(line ~ 'Index.*customer_id') AS field_index_used FROM plan_lines;
RESET enable_seqscan;
RESET enable_bitmapscan;
-- a declared field whose index is missing (a restore keeps search_field, not the index) gets it
-- back from search_maintain()
DROP INDEX observers.search_doc_f_new_customer_id_988e69b8;
SELECT observers.search_maintain() IS NOT NULL AS maintained;
SELECT count(*) AS field_index_back FROM pg_indexes
 WHERE schemaname = 'observers' AND indexname = 'search_doc_f_new_customer_id_988e69b8';
SELECT observers.search_drop_field('new.customer_id') AS dropped,
       observers.search_drop_field('new.customer_id') AS dropped_again;
SELECT count(*) AS field_indexes_left FROM pg_indexes
 WHERE schemaname = 'observers' AND indexdef LIKE '%customer_id%';

-- bad input: clear errors, nothing executed from the input
SELECT try($$SELECT * FROM observers.search(op => 'TRUNCATE')$$);
SELECT try($$SELECT * FROM observers.search(fields => '{"customer_id": 1}')$$);
SELECT try($$SELECT * FROM observers.search(fields => '{"new.x'')); DROP TABLE shop.orders; --": 1}')$$);
SELECT try($$SELECT * FROM observers.search(fields => '[1]')$$);
SELECT try($$SELECT * FROM observers.search(fields => '{"new.id": [1, 2]}')$$);
SELECT try($$SELECT * FROM observers.search(lim => 0)$$);
SELECT try($$SELECT * FROM observers.search(before_id => 3)$$);
SELECT try($$SELECT * FROM observers.search_facets('nope')$$);
SELECT try($$SELECT * FROM observers.search_timeseries('week')$$);
SELECT try($$SELECT observers.search_add_field('new')$$);
SELECT try($$SELECT observers.search_configure('-1 day')$$);
SELECT count(*) AS quotes_are_text FROM observers.search($$'); DROP TABLE shop.orders; --$$);
SELECT to_regclass('shop.orders') IS NOT NULL AS orders_still_there;
SELECT try($$SELECT * FROM observers.feed_fetch('search', 0)$$);
SELECT try($$SELECT * FROM observers.feed_fetch('Bad Name', 1)$$);

-- retention of the search index: its own setting; search_maintain() drops whole days
SELECT observers._search_retention() AS default_retention;
SELECT observers.search_configure('90 days');
SELECT observers.search_configure('60 days');
SELECT retention FROM observers.search_config;
-- (created: 0, or 1 when midnight UTC passed since CREATE EXTENSION)
SELECT observers.search_maintain() ~ '^search index: created (0|1 \(search_doc_p[0-9]{8}\)); dropped 0; skipped 0; deleted 0 ' AS maintained;
SELECT count(*) >= 9 AS default_and_eight_days FROM pg_inherits
 WHERE inhparent = 'observers.search_doc'::regclass;

-- an old day of the search index is dropped whole once it is older than the retention
CREATE TABLE observers.search_doc_p20200101 PARTITION OF observers.search_doc
    FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00');
INSERT INTO observers.search_doc (event_id, observer_id, op, txid, captured_at, doc, tsv)
VALUES (-1, 1, 'INSERT', 1, '2020-01-01 12:00:00+00', '{}', ''),
       (-2, 1, 'INSERT', 1, '2020-01-05 12:00:00+00', '{}', '');   -- DEFAULT partition
SELECT observers.search_maintain() ~ 'dropped 1 \(search_doc_p20200101\);.* deleted 1 old rows' AS old_day_dropped;
SELECT count(*) AS old_docs_left FROM observers.search_doc WHERE event_id < 0;

-- the outbox keeps what a feed has not passed: a lagging feed holds maintain()'s drops back
SET observers.retention = '2 days';
CREATE TABLE observers.event_p20200101 PARTITION OF observers.event
    FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-01-02 00:00:00+00');
INSERT INTO observers.event (observer_id, op, new, captured_at)
VALUES (1, 'INSERT', '{"id": "old"}', '2020-01-01 12:00:00+00');
-- every group passes everything (as if delivered), the search feed does not
SELECT observers.lease_acquire(g, 'w', '1 hour') IS NOT NULL AS leased FROM unnest('{g1,g2,default}'::text[]) AS g;
DO $$
DECLARE g text; b record;
BEGIN
    FOREACH g IN ARRAY '{g1,g2,default}'::text[] LOOP
        FOR i IN 1..2 LOOP
            SELECT * INTO b FROM observers.batch_open(g, 1);
            PERFORM observers.batch_close(g, 1);
        END LOOP;
    END LOOP;
END $$;
SELECT observers.maintain() ~ 'kept 1 \(event_p20200101' AS kept_for_the_feed;
SELECT observers.search_index() > 0 AS feed_passes_it;
SELECT observers.maintain() ~ 'dropped 1 \(event_p20200101\)' AS dropped_once_passed;
RESET observers.retention;
SELECT observers._feeds_min_xmin() IS NOT NULL AS feeds_hold_the_outbox;
SELECT observers.feed_drop('search') AS dropped, observers.feed_drop('search') AS dropped_again;
SELECT observers._feeds_min_xmin() IS NULL AS no_feed_no_hold;

-- a feed that is not the search index (the Elasticsearch sink's): fetch, then save what was
-- copied; the cursor moves only forward and only on save
SELECT count(*) AS fetched FROM observers.feed_fetch('elasticsearch', 5);
SELECT count(*) AS fetched_again_without_save FROM observers.feed_fetch('elasticsearch', 5);
SELECT observers.feed_save('elasticsearch', (SELECT max(id) FROM observers.feed_fetch('elasticsearch', 5)), 5) AS saved;
SELECT observers.feed_save('elasticsearch', 1, 1) AS saved_backwards;
SELECT array_agg(id ORDER BY id) = (SELECT (array_agg(id ORDER BY id))[6:] FROM observers.event) AS rest_in_order
  FROM observers.feed_fetch('elasticsearch', 1000);

-- who may do what: operators search; the worker indexes but may not search; others nothing
CREATE ROLE search_admin_r IN ROLE observers_admin;
CREATE ROLE search_worker_r IN ROLE observers_worker;
CREATE ROLE search_nobody_r;
SET ROLE search_admin_r;
SELECT count(*) AS admin_finds FROM observers.search('refund');
SELECT count(*) AS admin_facets FROM observers.search_facets('op');
RESET ROLE;
SET ROLE search_worker_r;
SELECT observers.search_index() AS worker_indexes;
SELECT try($$SELECT * FROM observers.search('refund')$$) AS worker_searches;
SELECT try($$SELECT count(*) FROM observers.search_doc$$) AS worker_reads_docs;
SELECT try($$SELECT observers.search_add_field('new.status')$$) AS worker_adds_field;
RESET ROLE;
SET ROLE search_nobody_r;
SELECT try($$SELECT * FROM observers.search('refund')$$) AS nobody_searches;
SELECT try($$SELECT observers.search_index()$$) AS nobody_indexes;
RESET ROLE;
DROP ROLE search_admin_r, search_worker_r, search_nobody_r;

-- the capture trigger is unchanged: capturing writes the outbox only
SELECT count(*) AS docs_before FROM observers.search_doc \gset
INSERT INTO shop.orders VALUES (20, 1, 'new', 'not indexed until the indexer runs');
SELECT count(*) - :docs_before AS docs_added_by_capture FROM observers.search_doc;
