-- pg_observers: privileges (runs last)
--
-- PUBLIC gets nothing: no USAGE on the schema, no EXECUTE on any function, no access to any
-- table (payloads are copies of user rows). See 00_roles.sql for the three roles.

REVOKE ALL ON SCHEMA observers FROM PUBLIC;
GRANT USAGE ON SCHEMA observers TO observers_admin, observers_worker, observers_capture;
-- Applications that enqueue jobs (50_jobs.sql): job_enqueue() only, no table.
GRANT USAGE ON SCHEMA observers TO observers_enqueue;

REVOKE ALL ON ALL TABLES IN SCHEMA observers FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA observers FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA observers FROM PUBLIC;

-- Operators read everything (status, outbox, checkpoints, leases, dead letters, heartbeats).
GRANT SELECT ON ALL TABLES IN SCHEMA observers TO observers_admin;
-- The worker reads the metadata (no payloads: not the outbox, not the dead letters).
GRANT SELECT ON observers.observer, observers.checkpoint, observers.leader_lease, observers.worker,
    observers.installation
    TO observers_worker;

-- The capture trigger runs as observers_capture: it may append to the outbox, nothing else.
-- Observer conditions are compiled (at creation) and evaluated (at capture) with these rights.
GRANT INSERT ON observers.event TO observers_capture;
GRANT USAGE ON SEQUENCE observers.event_id_seq TO observers_capture;
-- the default of observers.event.id (the SPI path of conditions inserts with it)
GRANT EXECUTE ON FUNCTION observers._event_id() TO observers_capture;

-- capture() runs as its owner, observers_capture, but is not declared SECURITY DEFINER: the code
-- switches to the owner itself for the duration of the call (capture/session.rs), as the
-- SECURITY DEFINER wrapper would, without the wrapper's catalog look-up on every statement that
-- fires the trigger (~1,150 CPU instructions per captured statement). Nor has it a SET
-- search_path clause, on purpose: the clause would cost every captured statement a GUC
-- save/restore plus a search path recomputation in the application's next statement (about as
-- much as the rest of a 1-row capture). The Rust code pins search_path = pg_catalog, pg_temp
-- itself wherever it resolves names (preparing and running a condition); the direct write path
-- resolves no unqualified names. PUBLIC has no EXECUTE on it (above): only the extension's own
-- functions create triggers that call it.
ALTER FUNCTION observers.capture() OWNER TO observers_capture;

ALTER FUNCTION observers._probe_condition(oid, text, text)
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION observers._probe_condition(oid, text, text) OWNER TO observers_capture;

-- The worker.
GRANT EXECUTE ON FUNCTION
    observers.lease_acquire(text, text, interval),
    observers.lease_release(text, text, bigint),
    observers.batch_open(text, bigint),
    observers.batch_fetch(text, pg_snapshot, pg_snapshot, bigint, bigint, int),
    observers.checkpoint_save(text, bigint, bigint),
    observers.batch_close(text, bigint),
    observers.dlq_add(text, bigint, bigint, int, int, text, text, jsonb, text, int, int),
    observers.heartbeat(text, text, jsonb),
    observers.observer_definitions(text),
    observers.maintain(),
    observers.status(),
    observers.dedup_claim(bytea[], date[], text, interval, interval),
    observers.dedup_confirm(bytea[], date[], interval),
    observers.dedup_release(bytea[], date[], text),
    observers.dedup_done(bytea[], date[]),
    observers.park_add(text, bigint, bigint[], int[], int[], text[], text[], date[], text[], text[], int[], text[]),
    observers.park_fetch(text, text[], bigint[], int),
    observers.park_finish(text, bigint, bigint, text, int, int),
    observers.park_set_destination(text, bigint, text),
    observers.attempt_add(text, bigint[], int[], int[], int[], timestamptz[], real[], int[], text[], text[]),
    -- the job queue (50_jobs.sql): every worker of a group runs jobs
    observers.job_enqueue_pair(text, bigint, bigint, int, int, date, text, text, int),
    observers.job_runner_beat(uuid, text, text, boolean),
    observers.job_rescue(text, interval),
    observers.job_claim(text, text, uuid, int, interval),
    observers.job_finish(bigint, uuid, text, text, int, interval),
    observers.job_complete(bigint[], uuid[]),
    observers.job_maintain(),
    observers.job_stats(),
    -- the worker applies the observers of its YAML file at start (create or replace)
    observers.create_observer(text, regclass, text[], text, text[], text[], jsonb, text, boolean)
TO observers_worker;

-- Operators.
GRANT EXECUTE ON FUNCTION
    observers.create_observer(text, regclass, text[], text, text[], text[], jsonb, text, boolean),
    observers.drop_observer(text),
    observers.enable_observer(text),
    observers.disable_observer(text),
    observers.repair_observer(text),
    observers.repair(text),
    observers.status(),
    observers.maintain(),
    observers.observer_definitions(text),
    observers.dlq_list(text, timestamptz, timestamptz, text, int),
    observers.dlq_show(bigint),
    observers.dlq_stats(),
    observers.dlq_retry(bigint),
    observers.dlq_retry_all(text, timestamptz, timestamptz, text, boolean),
    observers.dlq_purge(text, timestamptz, timestamptz, text, bigint[], boolean, boolean),
    observers.debug_event(bigint),
    observers.replay(text, bigint, bigint, boolean),
    observers.checkpoint_show(text),
    observers.checkpoint_skip(text, boolean),
    observers.job_enqueue(text, jsonb, int, timestamptz, text, int, text, int),
    observers.job_list(text, text, text, int),
    observers.job_show(bigint),
    observers.job_retry(bigint),
    observers.job_cancel(bigint),
    observers.job_stats(),
    observers.job_queue_pause(text, text),
    observers.job_queue_resume(text, text),
    observers.job_maintain()
TO observers_admin;

-- Applications: enqueue a run of an operator-defined observer action, in their own
-- transaction (docs/SECURITY.md, "Who may enqueue jobs"). Nothing else: no table, no URL.
GRANT EXECUTE ON FUNCTION
    observers.job_enqueue(text, jsonb, int, timestamptz, text, int, text, int)
TO observers_enqueue;
-- The searchable audit trail (52_search.sql, docs/SEARCH.md). The worker fills it and feeds the
-- Elasticsearch sink (it reads payloads through feed_fetch as it does through batch_fetch) but
-- may not search it. Searching runs with the caller's rights: SELECT on observers.search_doc,
-- which only operators have (a copy of every payload, like the outbox).
GRANT EXECUTE ON FUNCTION
    observers.feed_fetch(text, int),
    observers.feed_save(text, bigint, bigint),
    observers.feed_status(),
    observers.feed_dead_letter_add(text, bigint[], text[], int[], text[], text[]),
    observers.search_index(int),
    observers.search_maintain()
TO observers_worker;
GRANT EXECUTE ON FUNCTION
    observers.feed_status(),
    observers.feed_drop(text),
    observers.search_index(int),
    observers.search_maintain(),
    observers.search_configure(interval),
    observers.search_add_field(text),
    observers.search_drop_field(text),
    observers.search(text, text, text, text, timestamptz, timestamptz, jsonb, int, timestamptz, bigint),
    observers.search_facets(text, text, text, text, text, timestamptz, timestamptz, jsonb, int),
    observers.search_timeseries(text, text, text, text, text, timestamptz, timestamptz, jsonb),
    observers._search_where(text, text, text, text, timestamptz, timestamptz, jsonb),
    observers._search_field_expr(text),
    observers._search_path(text)
TO observers_admin;
